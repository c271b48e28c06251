//! twi-probe: a synthetic-probe health checker for Discord bots.
//!
//! See ARCHITECTURE.md for the map of the modules.

pub mod cli;
pub mod config;
pub mod discord;
pub mod exposition;
pub mod history;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod on_demand;
pub mod probe;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod schedule;
pub mod scrape;
pub mod serve;
pub mod startup_pages;
/// Snowflakes live in the sandbox crate (the dependency points one way).
pub use twi_sandbox::snowflake;
pub mod web;
