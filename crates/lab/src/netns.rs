//! Network namespaces, veth links and nftables rules, made by a test and removed
//! when dropped (also when the test fails): every address a lab test uses lives
//! inside namespaces it created itself.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace owned by the test.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(&format!("db{tag}"));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS …`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace (`ip netns exec NS program`; the
    /// program replaces `ip`, so the child's PID is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {}: {}\n{ruleset}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, kv: &str) {
        run(self.command("sysctl").args(["-q", "-w", kv]));
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates,
    /// and threads (and runtimes) it starts, belong to the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// A tokio runtime whose worker threads live in the namespace; run futures on it
    /// with [`NsRuntime::run`] so their sockets are the namespace's.
    pub fn runtime(&self) -> NsRuntime {
        let rt = self.enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
        });
        NsRuntime { rt }
    }

    /// The PIDs of the processes running in the namespace.
    fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in here was started by this test (the namespace is its
        // own): stop it, then delete the namespace with its interfaces and rules.
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A runtime inside a namespace (see [`Netns::runtime`]).
pub struct NsRuntime {
    rt: tokio::runtime::Runtime,
}

impl NsRuntime {
    /// Runs `fut` on a worker thread of the namespace and waits for its result.
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt
            .block_on(self.rt.spawn(fut))
            .expect("task in the namespace")
    }

    /// Starts `fut` on the namespace's runtime and leaves it running.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }
}

/// Links two namespaces with a veth pair and gives each end an address (`a.b.c.d/len`).
/// Returns the interface names in `a` and in `b`.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let an = unique("va");
    let bn = unique("vb");
    run(Command::new("ip").args([
        "link",
        "add",
        &an,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &bn,
        "netns",
        b.name(),
    ]));
    a.ip(&["addr", "add", a_addr, "dev", &an]);
    b.ip(&["addr", "add", b_addr, "dev", &bn]);
    a.ip(&["link", "set", &an, "up"]);
    b.ip(&["link", "set", &bn, "up"]);
    (an, bn)
}
