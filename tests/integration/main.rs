//! Integration tests: one binary; every server runs on 127.0.0.1.

mod cli;
mod compat;
mod config_files;
mod deploy;
mod discord;
mod discord_probes;
mod exporter_probe;
mod http_probe;
mod metrics;
mod monitoring;
mod monitoring_db;
mod sandbox_bot;
mod sandbox_gateway;
mod sandbox_rest;
mod serve;
mod shared_channels;
mod support;
