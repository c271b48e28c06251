//! The sandbox's own tests: one binary; every server runs on 127.0.0.1.
//! Real clients (serenity in-process, discord.py as a process) talk to it.

mod bot;
mod compat;
mod discord;
mod gateway;
mod interactions;
mod rest;
