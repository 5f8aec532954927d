//! The Helm chart (deploy/helm/ferry), rendered by a real `helm`: it lints, it refuses
//! values that cannot work with a message naming them, and the control plane and
//! relay it describes run. The last test starts both from the rendered manifests the
//! way the kubelet would (arguments with `$(VAR)` expanded from the container's
//! environment, Secrets and volumes as files at their mount paths), then carries
//! bytes from a client through that relay to an agent.
//!
//! `helm` comes from `FERRY_HELM` or the PATH (`.ci/run` installs it). In CI a missing
//! helm is a failure; elsewhere the tests that need it say SKIPPED and pass. The CA
//! the chart's Secret holds comes from `ferry control --init-ca`, tested here too.
//!
//! The systemd units (deploy/systemd) pass `systemd-analyze verify` without a
//! warning, name only flags and variables the binary knows, and their example
//! settings start a control plane and a relay that registers with it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use ferry_proto::api::{RegionsResponse, RelayInfo};
use ferry_proto::token::TokenKind;
use ferry_transport::ControlClient;
use serde::Deserialize;
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/ferry")
}

/// The helm binary: `FERRY_HELM`, else `helm` on the PATH (see [`tool`]).
fn helm(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FERRY_HELM") {
        Some(path) => Some(PathBuf::from(path)),
        None => tool("helm", test),
    }
}

/// `helm template` with `--set` values: the YAML it prints, or its error text.
fn render_yaml(helm: &Path, sets: &[String]) -> Result<String, String> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "ferry"]).arg(chart());
    for set in sets {
        cmd.arg("--set").arg(set);
    }
    let out = cmd.output().map_err(|e| format!("running helm: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`render_yaml`]'s objects.
fn render(helm: &Path, sets: &[String]) -> Result<Vec<Value>, String> {
    let text = render_yaml(helm, sets)?;
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).map_err(|e| format!("helm printed bad YAML: {e}"))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn sets(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn args_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[test]
fn the_chart_lints_and_refuses_values_that_cannot_work() {
    let Some(helm) = helm("the_chart_lints_and_refuses_values_that_cannot_work") else {
        return;
    };
    let lint = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(chart())
        .args([
            "--set",
            "control.names={ferry.example.com}",
            "--set",
            "control.database.secret=db",
        ])
        .output()
        .expect("run helm lint");
    assert!(
        lint.status.success(),
        "helm lint --strict: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let refused = |values: &[&str], says: &str| {
        let err = render(&helm, &sets(values)).expect_err("helm should refuse these values");
        assert!(
            err.contains(says),
            "{values:?}: expected `{says}` in: {err}"
        );
    };
    refused(&[], "control.names is required");
    refused(&["control.names={a.example}"], "needs PostgreSQL");
    refused(
        &[
            "control.names={a.example}",
            "control.replicas=1",
            "relays.regions[0].name=EU_1",
        ],
        "not a usable region name",
    );
    refused(
        &[
            "control.names={a.example}",
            "control.replicas=1",
            "caSecret=",
        ],
        "caSecret is required",
    );

    // Two replicas on PostgreSQL, two regions.
    let objects = render(
        &helm,
        &sets(&[
            "control.names={ferry.example.com}",
            "control.database.secret=ferry-database",
            "relays.regions[0].name=eu",
            "relays.regions[1].name=us",
            "relays.regions[1].replicas=3",
            "relays.regions[1].appsDomain=apps.us.example.com",
        ]),
    )
    .expect("render");
    let control = find(&objects, "Deployment", "ferry-control").expect("control Deployment");
    assert_eq!(control["spec"]["replicas"], 2);
    let env = &control["spec"]["template"]["spec"]["containers"][0]["env"];
    let database = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "FERRY_DATABASE_URL")
        .expect("the database URL comes from the Secret");
    assert_eq!(
        database["valueFrom"]["secretKeyRef"]["name"],
        "ferry-database"
    );
    assert!(
        find(&objects, "PersistentVolumeClaim", "ferry-control").is_none(),
        "replicas on PostgreSQL keep no volume"
    );
    let names = args_of(control);
    for name in ["ferry.example.com", "ferry-control.default.svc"] {
        assert!(
            names.iter().any(|a| a == name),
            "API certificate names {name}: {names:?}"
        );
    }

    for (region, replicas) in [("eu", 2), ("us", 3)] {
        let name = format!("ferry-relay-{region}");
        let relays = find(&objects, "StatefulSet", &name).expect("one StatefulSet a region");
        assert_eq!(relays["spec"]["replicas"], replicas);
        let args = args_of(relays);
        let region_at = args.iter().position(|a| a == "--region").unwrap();
        assert_eq!(args[region_at + 1], region);
        assert_eq!(
            args.iter().any(|a| a == "apps.us.example.com"),
            region == "us"
        );
        // A relay gets the CA's certificate, never its key.
        let volumes = relays["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let ca = volumes.iter().find(|v| v["name"] == "ca").unwrap();
        assert_eq!(ca["secret"]["items"].as_array().unwrap().len(), 1);
        assert_eq!(ca["secret"]["items"][0]["key"], "ca.pem");
        assert!(find(&objects, "PodDisruptionBudget", &name).is_some());
    }

    // What Kubernetes would make of it: every object against the API's schema, with
    // unknown fields refused (kubernetes-validate, from PyPI; .ci/run installs it).
    if let Some(validate) = tool(
        "kubernetes-validate",
        "the_chart_lints_and_refuses_values_that_cannot_work",
    ) {
        let dir = TempDir::new("chart-schema");
        for (i, values) in [
            vec![
                "control.names={a.example}",
                "control.database.secret=db",
                "relays.regions[0].name=eu",
                "relays.regions[1].name=us",
                "relays.regions[1].appsDomain=apps.us.example.com",
            ],
            vec!["control.names={a.example}", "control.replicas=1"],
        ]
        .iter()
        .enumerate()
        {
            let rendered = render_yaml(&helm, &sets(values)).expect("render");
            let file = dir.0.join(format!("rendered-{i}.yaml"));
            std::fs::write(&file, rendered).unwrap();
            let checked = Command::new(&validate)
                .args(["--strict", "--quiet", "-k", "1.31.0"])
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            assert!(
                checked.status.success(),
                "{values:?} against Kubernetes 1.31's schema: {}{}",
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }

    // One replica without a database keeps SQLite on a volume, replaced, not rolled.
    let objects = render(
        &helm,
        &sets(&["control.names={a.example}", "control.replicas=1"]),
    )
    .expect("render");
    let control = find(&objects, "Deployment", "ferry-control").unwrap();
    assert_eq!(control["spec"]["strategy"]["type"], "Recreate");
    assert!(find(&objects, "PersistentVolumeClaim", "ferry-control").is_some());
}

/// Runs `ferry control --init-ca` on `data_dir`; returns what it printed.
fn init_ca(data_dir: &Path) -> Result<String> {
    let out = Command::new(FERRY)
        .args(["control", "--init-ca", "--data-dir"])
        .arg(data_dir)
        .env("FERRY_CONFIG", data_dir.join("no-such-config.toml"))
        .output()?;
    ensure!(
        out.status.success(),
        "ferry control --init-ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ferry control --init-ca` makes the CA that the chart's Secret holds: once, then the
/// same one on every later run, with the key readable by its owner only.
#[test]
fn init_ca_makes_a_ca_once_and_keeps_it() {
    let dir = TempDir::new("init-ca");
    let data = dir.0.join("ca");
    let run = || init_ca(&data).expect("ferry control --init-ca");
    let said = run();
    assert!(
        said.contains("ca.pem") && said.contains("ca.key.pem"),
        "{said}"
    );
    let cert = std::fs::read_to_string(data.join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(data.join("ca.key.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("ca.key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the CA key is private: {mode:o}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        2,
        "only the CA: no store, no admin token"
    );
    run();
    assert_eq!(std::fs::read_to_string(data.join("ca.pem")).unwrap(), cert);
    assert_eq!(
        std::fs::read_to_string(data.join("ca.key.pem")).unwrap(),
        key
    );
}

/// A free loopback port, for TCP and UDP alike (relays serve QUIC and HTTPS on one).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One container of a rendered workload, made runnable here: what the kubelet would
/// pass to the process, with mount paths mapped to directories under `root`.
struct Pod {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Builds the container `workload`'s process as pod `pod_name` on a node at
/// 127.0.0.1. `secrets` holds each Secret's keys and contents.
fn pod(
    workload: &Value,
    pod_name: &str,
    root: &Path,
    secrets: &BTreeMap<&str, BTreeMap<&str, String>>,
) -> Result<Pod> {
    let spec = &workload["spec"]["template"]["spec"];
    let container = &spec["containers"][0];

    // Environment: literal values and the downward API; `$(VAR)` in later entries and
    // in the arguments refers to earlier ones.
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().context("env name")?.to_string();
        let secret_ref = &entry["valueFrom"]["secretKeyRef"];
        let value = if let Some(v) = entry["value"].as_str() {
            v.to_string()
        } else if let (Some(secret), Some(key)) =
            (secret_ref["name"].as_str(), secret_ref["key"].as_str())
        {
            secrets
                .get(secret)
                .and_then(|keys| keys.get(key))
                .with_context(|| format!("env {name}: Secret {secret} has no key {key}"))?
                .clone()
        } else {
            match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_string(),
                Some("status.hostIP") => "127.0.0.1".to_string(),
                other => bail!("env {name}: no stand-in for {other:?} in this test"),
            }
        };
        env.push((name, value));
    }

    // Volumes as directories: a Secret's keys (or its listed items) become files.
    let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().context("volume name")?;
        let dir = root.join(format!("{pod_name}-{name}"));
        std::fs::create_dir_all(&dir)?;
        if let Some(secret) = volume["secret"].as_object() {
            let secret_name = secret["secretName"].as_str().context("secretName")?;
            let data = secrets.get(secret_name);
            let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
            ensure!(
                data.is_some() || optional,
                "Secret {secret_name} is missing"
            );
            let data = data.cloned().unwrap_or_default();
            match secret.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().context("item key")?;
                        let path = item["path"].as_str().context("item path")?;
                        let content = data.get(key).context("Secret key missing")?;
                        std::fs::write(dir.join(path), content)?;
                    }
                }
                None => {
                    for (key, content) in &data {
                        std::fs::write(dir.join(key), content)?;
                    }
                }
            }
        }
        volumes.insert(name.to_string(), dir);
    }

    // Mounts: a whole volume at a path, or one file of it (subPath) inside another
    // mount, which is a copy here.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let container_mounts: Vec<&Value> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for mount in &container_mounts {
        if mount.get("subPath").is_none() {
            let dir = &volumes[mount["name"].as_str().context("mount name")?];
            mounts.push((
                mount["mountPath"].as_str().unwrap().to_string(),
                dir.clone(),
            ));
        }
    }
    // Longest first, so that the most specific mount maps a path.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let map_path = |path: &str| -> Option<PathBuf> {
        mounts.iter().find_map(|(at, dir)| {
            let rest = path.strip_prefix(at.as_str())?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| dir.join(rest.trim_start_matches('/')))
        })
    };
    for mount in &container_mounts {
        if let Some(sub) = mount["subPath"].as_str() {
            let from = volumes[mount["name"].as_str().unwrap()].join(sub);
            let at = mount["mountPath"].as_str().unwrap();
            let to = map_path(at).with_context(|| format!("{at} lies in no mounted volume"))?;
            std::fs::copy(&from, &to).with_context(|| format!("{sub} into {at}"))?;
        }
    }

    let expand = |arg: &str| -> String {
        let mut arg = arg.to_string();
        for (name, value) in &env {
            arg = arg.replace(&format!("$({name})"), value);
        }
        arg
    };
    let mut args = Vec::new();
    for arg in container["args"].as_array().context("args")? {
        let arg = expand(arg.as_str().context("string arg")?);
        // Loopback only in tests: the chart listens on every address of the pod.
        let arg = arg.replace("0.0.0.0:", "127.0.0.1:");
        let (at, path) = match arg.strip_prefix('@') {
            Some(path) => ("@", path.to_string()),
            None => ("", arg.clone()),
        };
        let arg = match path.starts_with('/').then(|| map_path(&path)).flatten() {
            Some(mapped) => format!("{at}{}", mapped.display()),
            None => arg,
        };
        args.push(arg);
    }
    Ok(Pod { args, env })
}

/// A relay token for `relay`, minted with the admin token by the control plane behind
/// `control`.
async fn relay_token(control: &ControlClient, admin_token: &str, relay: &str) -> Result<String> {
    let minted: ferry_proto::api::MintTokenResponse = control
        .post(
            "/api/v1/tokens",
            Some(admin_token),
            &ferry_proto::api::MintTokenRequest {
                kind: TokenKind::Relay,
                subject: relay.into(),
                ttl_secs: None,
            },
        )
        .await?;
    Ok(minted.token)
}

/// Every relay in the control plane's region map.
async fn relays_listed(control: &ControlClient, admin_token: &str) -> Result<Vec<RelayInfo>> {
    let regions: RegionsResponse = control.get("/api/v1/regions", Some(admin_token)).await?;
    Ok(regions.regions.into_iter().flat_map(|r| r.relays).collect())
}

/// Starts `ferry ARGS` with `env` (its log: `NAME.log` in `dir`) and waits until its
/// admin port on loopback says it is ready.
async fn start_ready(
    dir: &Path,
    name: &str,
    args: &[String],
    env: &[(String, String)],
    admin_port: u16,
) -> Result<tokio::process::Child> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = spawn_ferry(dir, name, &args, &env);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(admin, "/readyz").await.ok() != Some(200) {
        if Instant::now() > deadline {
            bail!(
                "{name} never became ready on {admin}; its log:\n{}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

#[tokio::test]
async fn the_charts_control_plane_and_relay_run_and_carry_bytes() -> Result<()> {
    let Some(helm) = helm("the_charts_control_plane_and_relay_run_and_carry_bytes") else {
        return Ok(());
    };
    run_chart(&helm, None).await
}

/// The chart's default: two control plane replicas sharing PostgreSQL. The relay
/// registers with one replica; the other lists it, and the agent and the client
/// work through that other one.
#[tokio::test]
async fn the_charts_replicas_share_postgresql() -> Result<()> {
    let test = "the_charts_replicas_share_postgresql";
    let Some(helm) = helm(test) else {
        return Ok(());
    };
    let Ok(base) = std::env::var("FERRY_TEST_DATABASE_URL") else {
        skipped(test, "FERRY_TEST_DATABASE_URL is not set");
        return Ok(());
    };
    let Some(psql) = tool("psql", test) else {
        return Ok(());
    };
    // A scratch database of this test's own, dropped at the end.
    let database = format!("ferry_chart_{}", std::process::id());
    let sql = |statement: String| -> Result<()> {
        let out = Command::new(&psql)
            .args([
                base.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &statement,
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "psql {statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    sql(format!("CREATE DATABASE {database}"))?;
    let (before_query, query) = base.split_once('?').unwrap_or((base.as_str(), ""));
    let (server, _) = before_query.rsplit_once('/').context("database URL")?;
    let url = match query {
        "" => format!("{server}/{database}"),
        q => format!("{server}/{database}?{q}"),
    };
    let result = run_chart(&helm, Some(&url)).await;
    sql(format!("DROP DATABASE {database} WITH (FORCE)"))?;
    result
}

/// Renders the chart for one region with one relay (and, with `database`, two control
/// plane replicas on it), starts what it describes, and moves bytes through it.
async fn run_chart(helm: &Path, database: Option<&str>) -> Result<()> {
    let dir = TempDir::new("helm");
    let root = &dir.0;

    // The CA Secret, made the way values.yaml tells operators to.
    let ca_dir = root.join("ferry-ca");
    init_ca(&ca_dir)?;
    let mut secrets: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    secrets.insert(
        "ferry-ca",
        BTreeMap::from([
            ("ca.pem", std::fs::read_to_string(ca_dir.join("ca.pem"))?),
            (
                "ca.key.pem",
                std::fs::read_to_string(ca_dir.join("ca.key.pem"))?,
            ),
        ]),
    );

    let (api, control_admin, quic, relay_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let control_url = format!("https://127.0.0.1:{api}");
    let mut values = vec![format!("control.replicas={}", 1 + database.is_some() as u8)];
    if let Some(url) = database {
        secrets.insert("ferry-database", BTreeMap::from([("url", url.to_string())]));
        values.push("control.database.secret=ferry-database".into());
    }
    let objects = render(
        helm,
        &[
            values,
            vec![
                "control.names={ferry.example.com}".to_string(),
                format!("control.port={api}"),
                format!("control.adminPort={control_admin}"),
                format!("relays.port={quic}"),
                format!("relays.adminPort={relay_admin}"),
                "relays.regions[0].name=eu".to_string(),
                "relays.regions[0].replicas=1".to_string(),
                // The in-cluster service name does not resolve here.
                format!("relays.controlUrl={control_url}"),
            ],
        ]
        .concat(),
    )
    .map_err(anyhow::Error::msg)?;

    // The control plane, from its Deployment: one pod, or two on PostgreSQL (here
    // beside each other, so the second listens on ports of its own).
    let deployment = find(&objects, "Deployment", "ferry-control").context("control Deployment")?;
    let first = pod(deployment, "ferry-control-0", root, &secrets)?;
    let _first_child =
        start_ready(root, "control-0", &first.args, &first.env, control_admin).await?;
    let ca_file = ca_dir.join("ca.pem");
    // It kept the shared CA (clients trust the Secret's certificate) and wrote its
    // admin token into its data volume.
    let admin_of = |pod_name: &str| -> Result<String> {
        Ok(
            std::fs::read_to_string(root.join(format!("{pod_name}-data/admin.token")))
                .context("the control plane's admin token in its data volume")?
                .trim()
                .to_string(),
        )
    };
    let first_admin = admin_of("ferry-control-0")?;
    let first_client = ControlClient::new(&control_url, &std::fs::read_to_string(&ca_file)?)?;
    let (serving, serving_url, serving_admin) = match database {
        None => (_first_child, control_url.clone(), control_admin),
        Some(_) => {
            let (api2, admin2) = (free_port(), free_port());
            let mut second = pod(deployment, "ferry-control-1", root, &secrets)?;
            for arg in second.args.iter_mut() {
                *arg = arg
                    .replace(&format!(":{api}"), &format!(":{api2}"))
                    .replace(&format!(":{control_admin}"), &format!(":{admin2}"));
            }
            let child = start_ready(root, "control-1", &second.args, &second.env, admin2).await?;
            (child, format!("https://127.0.0.1:{api2}"), admin2)
        }
    };
    let serving_token = admin_of(if database.is_some() {
        "ferry-control-1"
    } else {
        "ferry-control-0"
    })?;
    let mut net = Network {
        control_url: serving_url,
        ca_file: ca_file.clone(),
        admin_token: serving_token,
        control_admin: SocketAddr::from(([127, 0, 0, 1], serving_admin)),
        control: serving,
        relays: Vec::new(),
        agents: Vec::new(),
        client_uid: None,
        relay_env: Vec::new(),
        client_extra_env: Vec::new(),
        dir,
    };
    let root = net.dir.0.clone();

    // The relay's token, in the Secret under the pod's name, as NOTES.txt says; minted
    // by the first replica, which the relay also registers with.
    let relay_name = "ferry-relay-eu-0";
    let relay_token = relay_token(&first_client, &first_admin, relay_name).await?;
    secrets.insert(
        "ferry-relay-tokens",
        BTreeMap::from([(relay_name, format!("{relay_token}\n"))]),
    );
    let relay = pod(
        find(&objects, "StatefulSet", "ferry-relay-eu").context("relay StatefulSet")?,
        relay_name,
        &root,
        &secrets,
    )?;
    assert!(
        !relay.args.iter().any(|a| a.contains(&relay_token)),
        "the token stays out of the process list: {:?}",
        relay.args
    );
    let _relay_child = start_ready(&root, relay_name, &relay.args, &relay.env, relay_admin).await?;

    // The control plane lists it where the chart said: its node's address and port.
    // On PostgreSQL, the replica the relay never spoke to lists it too.
    let listed = relays_listed(&net.control_client(), &net.admin_token).await?;
    ensure!(
        listed.len() == 1
            && listed[0].name == relay_name
            && listed[0].region == "eu"
            && listed[0].quic_addr == format!("127.0.0.1:{quic}"),
        "region map: {listed:?}"
    );

    // Bytes from a client, through that relay, to an agent and its echo service.
    let echo = echo_server().await;
    net.start_agent("demo--alice", &["--region", "eu"]).await?;
    let user = net.mint(TokenKind::User, "alice", None).await?;
    net.wait_for_agent("demo--alice", &user).await?;
    let payload = random_bytes(256 * 1024);
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo--alice", &echo.to_string(), &payload)
        .await?;
    ensure!(ok, "ferry tcp failed: {err}");
    ensure!(out == payload, "echo came back with {} bytes", out.len());
    Ok(())
}

/// A program on the PATH (or `None`, outside CI, after saying the test is skipped).
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        skipped(
            test,
            &format!("{name} is not installed (.ci/run installs it)"),
        );
    }
    found
}

/// Says loudly that `test` is skipped because of `why`; under CI, fails it instead.
fn skipped(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why}, and CI must run this test"
    );
    eprintln!("SKIPPED {test}: {why}");
}

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// `KEY=value` lines of an example settings file; with `commented`, the `#KEY=` ones
/// too (settings shown but off by default).
fn env_file(name: &str, commented: bool) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(systemd_dir().join(name)).expect("settings file");
    text.lines()
        .filter_map(|line| {
            let line = match line.strip_prefix('#') {
                Some(rest) if commented => rest,
                Some(_) => return None,
                None => line,
            };
            let (key, value) = line.split_once('=')?;
            key.starts_with("FERRY_")
                .then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// The unit's ExecStart, split into words, with `%i` and `%n` filled in.
fn exec_start(unit: &str, instance: &str) -> Vec<String> {
    let text = std::fs::read_to_string(systemd_dir().join(unit)).expect("unit file");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let full_name = unit.replace("@.", &format!("@{instance}."));
    line.split_whitespace()
        .map(|w| w.replace("%i", instance).replace("%n", &full_name))
        .collect()
}

fn help(subcommand: &str) -> String {
    let out = Command::new(FERRY)
        .args([subcommand, "--help"])
        .output()
        .expect("ferry --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn systemd_units_verify_and_their_settings_run() -> Result<()> {
    let test = "systemd_units_verify_and_their_settings_run";
    let Some(analyze) = tool("systemd-analyze", test) else {
        return Ok(());
    };
    let dir = TempDir::new("systemd");
    let root = &dir.0;

    // systemd's own check, on copies that start this build's binary (verify wants
    // ExecStart to exist) and name an instance for the templates.
    let units = [
        ("ferry-control.service", ""),
        ("ferry-relay@.service", "eu-1"),
        ("ferry-agent@.service", "root"),
    ];
    let mut copies = Vec::new();
    for (unit, instance) in units {
        let text = std::fs::read_to_string(systemd_dir().join(unit))?;
        let copy = root.join(unit.replace("@.", &format!("@{instance}.")));
        std::fs::write(&copy, text.replace("/usr/local/bin/ferry", FERRY))?;
        copies.push(copy);
    }
    let verify = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()?;
    let said = String::from_utf8_lossy(&verify.stderr);
    ensure!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // Every flag of an ExecStart and every variable of a settings file is one the
    // binary reads.
    for ((unit, instance), settings) in units.iter().zip(["control.env", "relay.env", "agent.env"])
    {
        let words = exec_start(unit, instance);
        let help = help(&words[1]);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            ensure!(
                help.contains(&format!("{flag} ")),
                "{unit}: `ferry {}` has no {flag}",
                words[1]
            );
        }
        for (key, _) in env_file(settings, true) {
            ensure!(
                key == "FERRY_LOG" || help.contains(&format!("env: {key}")),
                "{settings}: `ferry {}` reads no {key}",
                words[1]
            );
        }
    }

    // The example settings, at loopback addresses, start a control plane and a relay.
    let (api, control_admin, quic, relay_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let paths = |word: String| {
        word.replace("/var/lib/ferry", &root.join("lib").display().to_string())
            .replace(
                "/var/cache/ferry",
                &root.join("cache").display().to_string(),
            )
            .replace(
                "/run/credentials",
                &root.join("credentials").display().to_string(),
            )
    };
    let mut control_env = env_file("control.env", false);
    for (key, value) in control_env.iter_mut() {
        match key.as_str() {
            "FERRY_LISTEN" => *value = format!("127.0.0.1:{api}"),
            "FERRY_ADMIN_LISTEN" => *value = format!("127.0.0.1:{control_admin}"),
            // Two names, comma-separated as in the file: the relay dials the second.
            "FERRY_NAMES" => *value = format!("{value},127.0.0.1"),
            _ => {}
        }
    }
    let words: Vec<String> = exec_start("ferry-control.service", "")
        .into_iter()
        .map(paths)
        .collect();
    let _control = start_ready(root, "control", &words[1..], &control_env, control_admin).await?;

    let data = root.join("lib/control");
    let ca_file = data.join("ca.pem");
    let control_url = format!("https://127.0.0.1:{api}");
    let control = ControlClient::new(&control_url, &std::fs::read_to_string(&ca_file)?)?;
    let admin = std::fs::read_to_string(data.join("admin.token"))?
        .trim()
        .to_string();
    let credentials = root.join("credentials/ferry-relay@eu-1.service");
    std::fs::create_dir_all(&credentials)?;
    std::fs::write(
        credentials.join("token"),
        relay_token(&control, &admin, "eu-1").await?,
    )?;

    let mut relay_env = env_file("relay.env", false);
    for (key, value) in relay_env.iter_mut() {
        match key.as_str() {
            "FERRY_LISTEN" | "FERRY_ADVERTISE" => *value = format!("127.0.0.1:{quic}"),
            "FERRY_CERT_NAMES" => *value = "127.0.0.1,relay.example.com".into(),
            "FERRY_CONTROL_URL" => *value = control_url.clone(),
            "FERRY_CA" => *value = ca_file.display().to_string(),
            "FERRY_ADMIN_LISTEN" => *value = format!("127.0.0.1:{relay_admin}"),
            _ => {}
        }
    }
    let words: Vec<String> = exec_start("ferry-relay@.service", "eu-1")
        .into_iter()
        .map(paths)
        .collect();
    let _relay = start_ready(root, "relay", &words[1..], &relay_env, relay_admin).await?;

    let listed = relays_listed(&control, &admin).await?;
    ensure!(
        listed.len() == 1
            && listed[0].name == "eu-1"
            && listed[0].region == "eu"
            && listed[0].quic_addr == format!("127.0.0.1:{quic}")
            && listed[0].server_name == "127.0.0.1",
        "region map: {listed:?}"
    );
    Ok(())
}
