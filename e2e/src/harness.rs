//! Real processes for end-to-end scenarios: builds the binaries once, starts them with their own
//! ports and temporary state, and kills every one of them when the scenario ends (also on panic).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

static BUILD: Once = Once::new();

/// The directory holding the workspace's binaries (`target/debug`), built if needed.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/debug/deps/, binaries (the demo) from target/debug/.
    let mut dir = exe.parent().expect("target dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // Cargo sets these for the test or benchmark that runs this, and build scripts (ring's)
        // rerun when they change: passed on, they made every run rebuild the TLS stack and all
        // that depends on it, 10 minutes of a release build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"]
                    .contains(&&*name)
            {
                build.env_remove(&*name);
            }
        }
        let status = build
            .arg("build")
            // Benchmarks run from target/release and must time release binaries of this tree.
            .args(release.then_some("--release"))
            .args([
                "-q",
                "-p",
                "shopfloor-controller",
                "-p",
                "shopfloor-agent",
                "-p",
                "kubectl-shopfloor",
                "-p",
                "shopfloor-sim",
                "--bins",
            ])
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the binaries failed");
    });
    dir
}

/// The binary `name`. `SHOPFLOOR_E2E_CONTROLLER=<path>` runs that controller instead of this
/// tree's (a build with symbols, for a profiler attached to a benchmark's controller).
pub fn bin(name: &str) -> PathBuf {
    if name == "shopfloor-controller"
        && let Some(path) = std::env::var_os("SHOPFLOOR_E2E_CONTROLLER")
    {
        eprintln!("NOTE: running the controller {} (SHOPFLOOR_E2E_CONTROLLER), not this tree's", path.display());
        return path.into();
    }
    bin_dir().join(name)
}

/// A process that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scenario's world: a temporary directory and the processes it started.
#[derive(Debug)]
pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub procs: Mutex<Vec<Proc>>,
    /// Environment every process started from now on gets.
    env: Mutex<Vec<(String, String)>>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temporary directory"), procs: Mutex::default(), env: Mutex::default() }
    }

    /// Sets `key=value` in the environment of every process started after this.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env.lock().unwrap_or_else(|p| p.into_inner()).push((key.into(), value.into()));
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Starts `bin` with `args`; stdout and stderr go to `<name>.log`.
    pub fn spawn(&self, name: &str, bin_name: &str, args: &[&str]) -> PathBuf {
        self.spawn_with_env(name, bin_name, args, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        &self,
        name: &str,
        bin_name: &str,
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> PathBuf {
        let log = self.path(&format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(bin(bin_name))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(self.env.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k, v)))
            .envs(envs.iter().copied())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin_name}: {e}"));
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).push(Proc { name: name.into(), child, log: log.clone() });
        log
    }

    /// The process id of the process named `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|p| p.name == name).map(Proc::pid)
    }

    /// Kills every process this scenario started.
    pub fn kill_all(&self) {
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Kills the process named `name` with SIGKILL.
    pub fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for p in procs.iter_mut().filter(|p| p.name == name) {
            p.kill();
        }
        procs.retain(|p| p.name != name);
    }

    /// Runs a command to completion.
    pub fn run(&self, bin_name: &str, args: &[&str]) -> Output {
        Command::new(bin(bin_name))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin_name}: {e}"))
    }

    /// Starts a Modbus simulator on a free port and returns its address.
    pub fn modbus_sim(&self, name: &str, extra: &[&str]) -> String {
        let write_log = format!("{name}-writes.jsonl");
        let mut args = vec!["--listen", "127.0.0.1:0", "--write-log", &write_log];
        args.extend_from_slice(extra);
        let log = self.spawn(name, "shopfloor-modbus-sim", &args);
        let line = wait_for_line(&log, "listening on", Duration::from_secs(10));
        line.rsplit(' ').next().expect("address").trim().to_owned()
    }

    /// A standalone plant on one Modbus simulator (`sim`): `manifests` gets the simulator's port
    /// and returns `plant/plant.yaml`; the controller is started and its QUIC address returned.
    pub fn modbus_plant(&self, manifests: impl FnOnce(&str) -> String) -> String {
        std::fs::create_dir_all(self.path("plant")).expect("plant");
        let modbus = self.modbus_sim("sim", &[]);
        let port = modbus.rsplit(':').next().expect("port").to_owned();
        std::fs::write(self.path("plant/plant.yaml"), manifests(&port)).expect("plant");
        self.controller()
    }

    /// Writes recorded by a simulator to a holding register or coil, with their values.
    pub fn sim_writes(&self, name: &str, table: &str, address: u16) -> Vec<Vec<u16>> {
        let text = std::fs::read_to_string(self.path(&format!("{name}-writes.jsonl"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["table"] == table && v["address"] == address)
            .map(|v| {
                v["values"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_u64().map(|n| n as u16)).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Starts the standalone controller on `plant/` and returns the QUIC address agents dial.
    pub fn controller(&self) -> String {
        self.controller_on("127.0.0.1:0")
    }

    /// Starts the standalone controller listening on `listen` (a restart reuses the address).
    pub fn controller_on(&self, listen: &str) -> String {
        let _ = std::fs::remove_file(self.path("state/endpoint"));
        self.spawn(
            "controller",
            "shopfloor-controller",
            &["--standalone", "plant", "--state-dir", "state", "--listen", listen, "--http", "127.0.0.1:0"],
        );
        let endpoint = self.path("state/endpoint");
        let patience = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            if let Some(e) = std::fs::read_to_string(&endpoint).ok().filter(|s| !s.is_empty()) {
                return e.trim().to_owned();
            }
            if start.elapsed() > patience {
                let log = std::fs::read_to_string(self.path("controller.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("no controller endpoint after {patience:?}; the end of controller.log:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Enrolls agent `name` with the token the plugin prints, into state directory `agent-<name>`.
    pub fn enroll(&self, name: &str) {
        let token = eventually("a bootstrap token", Duration::from_secs(20), || {
            let out = self.run("kubectl-shopfloor", &["--standalone", "plant", "--state-dir", "state", "enroll", name]);
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        let line =
            token.lines().find(|l| l.starts_with("shopfloor-agent enroll")).expect("enroll command line").to_owned();
        let state = format!("agent-{name}");
        let mut args = vec!["--state-dir", state.as_str()];
        args.extend(line.split_whitespace().skip(1));
        let out = self.run("shopfloor-agent", &args);
        assert!(
            out.status.success(),
            "enrollment failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Enrolls agent `name` and runs it dialling the controller at `endpoint` only through a new
    /// UDP impairment proxy (seeded with `seed`), which is returned.
    pub fn agent_behind_proxy(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        endpoint: &str,
        seed: u64,
    ) -> crate::proxy::UdpProxy {
        let proxy = rt
            .block_on(crate::proxy::UdpProxy::start(
                "127.0.0.1:0".parse().expect("addr"),
                endpoint.parse().expect("endpoint"),
                seed,
            ))
            .expect("proxy");
        self.enroll(name);
        let identity = self.path(&format!("agent-{name}/identity.yaml"));
        let text = std::fs::read_to_string(&identity).expect("identity");
        std::fs::write(&identity, text.replace(endpoint, &proxy.addr.to_string())).expect("dial the proxy");
        self.agent(name);
        proxy
    }

    /// Runs enrolled agent `name`.
    pub fn agent(&self, name: &str) {
        let state = format!("agent-{name}");
        let envelope = format!("envelope-{name}.yaml");
        // Agents refuse every write without their configured envelope: give each one, empty
        // unless the test wrote its own.
        if !self.path(&envelope).exists() {
            std::fs::write(self.path(&envelope), "equipment: {}\n").expect("envelope");
        }
        self.spawn(
            &format!("agent-{name}"),
            "shopfloor-agent",
            &[
                "--state-dir",
                &state,
                "run",
                "--envelope",
                &envelope,
                "--slice-backend",
                "noop",
                "--metrics",
                "127.0.0.1:0",
            ],
        );
    }

    /// Agent `name`'s Prometheus metrics, scraped over HTTP from the address it logged.
    pub fn agent_metrics(&self, name: &str) -> String {
        use std::io::{Read, Write};
        let line =
            wait_for_line(&self.path(&format!("agent-{name}.log")), "metrics on http://", Duration::from_secs(10));
        let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("metrics address").to_owned();
        let mut conn = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
        conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).expect("request");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("response");
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// The status of an object as the standalone controller recorded it.
    pub fn status(&self, plural: &str, name: &str) -> serde_yaml::Value {
        let path = self.path(&format!("state/objects/{plural}/plant-a/{name}.yaml"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        serde_yaml::from_str::<serde_yaml::Value>(&text)
            .ok()
            .map(|v| v["status"].clone())
            .unwrap_or(serde_yaml::Value::Null)
    }

    /// `kubectl shopfloor --standalone …` with `args`.
    pub fn plugin(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["--standalone", "plant", "--state-dir", "state"];
        all.extend_from_slice(args);
        let out = self.run("kubectl-shopfloor", &all);
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line of `log` containing `needle`, waiting for it.
pub fn wait_for_line(log: &Path, needle: &str, timeout: Duration) -> String {
    eventually(&format!("`{needle}` in {}", log.display()), timeout, || {
        let f = std::fs::File::open(log).ok()?;
        BufReader::new(f).lines().map_while(Result::ok).find(|l| l.contains(needle))
    })
}

/// A test whose need (root, a tool, a package) this machine does not meet: under `CI=true` it
/// fails, since `.ci/run` provides every need and a pass there must mean the test ran; elsewhere
/// it returns after saying, on stderr, what was not run and why.
pub fn unmet(need: &str, not_run: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI must provide {need} (see .ci/run): {not_run} was not run");
    }
    eprintln!("\n*** NOT RUN ({need} is missing): {not_run} ***\n");
}
