//! Integration tests: one binary; every server runs on 127.0.0.1.

mod cleanup;
mod cli;
mod config_files;
mod deploy;
// The serenity test client is the sandbox crate's: a client of a Discord.
#[allow(dead_code)]
#[path = "../../sandbox/tests/integration/discord.rs"]
mod discord;
pub(crate) mod discord_probes;
mod exporter_probe;
mod frame_stamps;
mod http_probe;
mod interactions_probe;
mod listener;
mod metrics;
mod monitoring;
mod monitoring_db;
mod probe_endpoint;
mod reload;
mod serve;
mod shared_channels;
mod status_page;
mod support;
