//! Integration tests: one binary; every server runs on 127.0.0.1.

mod cli;
mod config_files;
mod exporter_probe;
mod http_probe;
mod metrics;
mod support;
