//! Bad-config fixtures with their exact messages, and the shipped probes.yaml.

use std::path::{Path, PathBuf};

use twi_probe::config::Config;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

/// Every `X.yaml` in tests/fixtures/bad fails with exactly the lines in `X.expected`.
#[test]
fn every_bad_fixture_gives_its_exact_errors() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let yaml = std::fs::read_to_string(&path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{name} has no .expected file"));
        let errors = Config::from_yaml(&yaml, Path::new(&name))
            .expect_err(&format!("{name} should not validate"));
        assert_eq!(errors.to_string(), expected.trim_end(), "fixture {name}");
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} fixtures found");
}

#[test]
fn duration_error_has_the_documented_shape() {
    let yaml = std::fs::read_to_string(fixtures().join("bad_duration.yaml")).unwrap();
    let errors = Config::from_yaml(&yaml, Path::new("probes.yaml")).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (11, 14));
    assert_eq!(e.path, "probes[2].timeout");
    assert!(
        e.to_string()
            .starts_with("probes.yaml:11:14: probes[2].timeout: invalid duration \"5 parsecs\""),
        "{e}"
    );
}

#[test]
fn all_semantic_errors_are_reported_not_just_the_first() {
    let yaml = std::fs::read_to_string(fixtures().join("many_errors.yaml")).unwrap();
    let errors = Config::from_yaml(&yaml, Path::new("many_errors.yaml")).unwrap_err();
    assert_eq!(errors.0.len(), 7, "{errors}");
    let lines: Vec<u64> = errors.0.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "errors come in file order");
}

#[test]
fn an_inline_token_is_refused_without_echoing_it() {
    let yaml = std::fs::read_to_string(fixtures().join("inline_token.yaml")).unwrap();
    let errors = Config::from_yaml(&yaml, Path::new("p.yaml")).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("discord.token"), "{text}");
    assert!(
        !text.contains("not-a-real-token"),
        "the token leaked: {text}"
    );
}

#[test]
fn the_shipped_probes_yaml_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.target.name, "twi-bot-shard");
    assert!(config.probe("bot-exporter").is_some());
    assert!(
        config.discord.is_some(),
        "the prober's Discord connection is configured"
    );
}

#[test]
fn five_and_six_field_cron_both_parse_and_defaults_apply() {
    let config = super::support::config(
        r#"
target: {name: bot}
defaults: {every: 1m, timeout: 3s}
labels: {location: home}
probes:
  - name: five
    cron: "*/5 * * * *"
    http: {url: "http://127.0.0.1:9/"}
  - name: six
    cron: "30 */5 * * * *"
    labels: {location: away, shard: "0"}
    http: {url: "http://127.0.0.1:9/"}
  - name: plain
    http: {url: "http://127.0.0.1:9/"}
"#,
    );
    use std::time::Duration;
    use twi_probe::config::Schedule;
    let five = config.probe("five").unwrap();
    assert_eq!(
        five.schedule,
        Schedule::Cron {
            expression: "0 */5 * * * *".into(),
            min_interval: Duration::from_secs(300)
        }
    );
    assert_eq!(five.timeout, Duration::from_secs(3));
    assert_eq!(
        five.labels.get("location").map(String::as_str),
        Some("home")
    );
    let six = config.probe("six").unwrap();
    assert_eq!(six.schedule.min_interval(), Some(Duration::from_secs(300)));
    assert_eq!(six.labels.get("location").map(String::as_str), Some("away"));
    let plain = config.probe("plain").unwrap();
    assert_eq!(plain.schedule, Schedule::Every(Duration::from_secs(60)));
    assert_eq!(config.static_label_names(), vec!["location", "shard"]);
}

#[test]
fn an_unreadable_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/probes.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/probes.yaml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn only_regular_files_of_sane_size_are_read() {
    let dir = std::env::temp_dir().join(format!("twi-probe-cfgfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let big = dir.join("big.yaml");
    std::fs::write(&big, "#".repeat(5 << 20)).unwrap();
    for (path, message) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (dir.as_path(), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (big.as_path(), "the file is larger than 4096 KiB"),
    ] {
        let err = Config::load(path).expect_err("refused").to_string();
        assert!(
            err.starts_with(&format!("{}: {message}", path.display())),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
