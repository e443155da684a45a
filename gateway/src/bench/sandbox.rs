//! Runs model-written Python against unit tests in a separate, limited process.
//!
//! What it contains: accidents of generated code. The interpreter runs isolated from the
//! user's site packages and environment (`-I -S`, an empty environment), in a fresh
//! temporary folder, with limits set by the harness before the code runs: 5 s of CPU, 512 MiB
//! of address space, 1 MiB files, no new processes; the whole run is killed after 10 s of
//! wall time. Network: a new, empty network namespace (`unshare --net --map-root-user`) where
//! the kernel allows one, and in every case Python's socket functions are replaced by ones that
//! refuse. It is not a boundary against code written to attack the machine or to cheat the
//! grader (which shares its interpreter): the code runs as the user running `bench` and can
//! read what that user can (files; without a user namespace, the `bench` process's
//! environment, API keys included, under `/proc`). Run `bench` on models you would let run
//! tests on your machine.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

/// Wall-clock limit of one run.
pub const WALL_LIMIT: Duration = Duration::from_secs(10);

/// Sets the limits, closes the network, runs the solution, then each test; writes one JSON
/// object to `result.json` (the process's output goes nowhere: a printing loop must not fill
/// the benchmark's memory). Tests are `assert` statements run in the solution's namespace.
const HARNESS: &str = r#"
import json, resource, socket, sys
for res, lim in ((resource.RLIMIT_CPU, 5), (resource.RLIMIT_AS, 512 << 20),
                 (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_NPROC, 0)):
    try:
        resource.setrlimit(res, (lim, lim))
    except (ValueError, OSError):
        pass
def _refuse(*a, **k):
    raise OSError("network access is disabled in the benchmark sandbox")
socket.socket = socket.create_connection = socket.getaddrinfo = socket.socketpair = _refuse
tests = json.load(open("tests.json"))
def report(result):
    with open("result.json", "w") as f:
        f.write(json.dumps(result))
ns = {"__name__": "solution"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
except BaseException as e:
    report({"passed": 0, "error": "the code does not run: %s" % type(e).__name__})
    sys.exit(0)
passed, failed = 0, []
for t in tests:
    try:
        exec(t, ns)
        passed += 1
    except BaseException as e:
        failed.append(type(e).__name__)
report({"passed": passed, "error": ("failures: " + ", ".join(failed)) if failed else None})
"#;

/// How a run went.
#[derive(Debug, Clone, Deserialize)]
pub struct Outcome {
    /// Tests that passed.
    pub passed: usize,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The interpreter and isolation found on this machine.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The real interpreter (not a version manager's shim, which needs the environment).
    python: Option<PathBuf>,
    /// `unshare` can give the run an empty network namespace.
    net_namespace: bool,
}

impl Sandbox {
    /// Finds `python3` and whether network namespaces are available (once per run).
    pub fn detect() -> Sandbox {
        let python = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_absolute());
        let net_namespace = std::process::Command::new("unshare")
            .args(["--net", "--map-root-user", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Sandbox {
            python,
            net_namespace,
        }
    }

    /// How the network is closed, for the report.
    pub fn network(&self) -> &'static str {
        if self.net_namespace {
            "empty network namespace + socket guard"
        } else {
            "socket guard only (no user namespaces here)"
        }
    }

    /// Runs `code`, then `tests`, in a fresh folder.
    pub async fn run_python(&self, code: &str, tests: &[&str]) -> Result<Outcome, String> {
        let python = self
            .python
            .as_ref()
            .ok_or("no python3 on PATH to run the tests")?;
        let dir = std::env::temp_dir().join(format!("llm-gateway-bench-{}", uuid::Uuid::new_v4()));
        let result = self.run_in(&dir, python, code, tests).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn run_in(
        &self,
        dir: &std::path::Path,
        python: &std::path::Path,
        code: &str,
        tests: &[&str],
    ) -> Result<Outcome, String> {
        let io = |e: std::io::Error| format!("sandbox folder: {e}");
        tokio::fs::create_dir(dir).await.map_err(io)?;
        tokio::fs::write(dir.join("solution.py"), code)
            .await
            .map_err(io)?;
        let tests_json = serde_json::to_string(tests).map_err(|e| e.to_string())?;
        tokio::fs::write(dir.join("tests.json"), tests_json)
            .await
            .map_err(io)?;
        tokio::fs::write(dir.join("harness.py"), HARNESS)
            .await
            .map_err(io)?;
        let mut cmd = if self.net_namespace {
            let mut c = tokio::process::Command::new("unshare");
            c.args(["--net", "--map-root-user", "--"]).arg(python);
            c
        } else {
            tokio::process::Command::new(python)
        };
        cmd.args(["-I", "-S", "harness.py"])
            .current_dir(dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start python: {e}"))?;
        let status = match tokio::time::timeout(WALL_LIMIT, child.wait()).await {
            Ok(r) => r.map_err(|e| format!("python: {e}"))?,
            Err(_) => {
                return Ok(Outcome {
                    passed: 0,
                    error: Some(format!("killed after {} s", WALL_LIMIT.as_secs())),
                })
            }
        };
        let result = tokio::fs::read(dir.join("result.json")).await.ok();
        match result.and_then(|b| serde_json::from_slice::<Outcome>(&b).ok()) {
            Some(o) => Ok(Outcome {
                passed: o.passed.min(tests.len()),
                error: o.error,
            }),
            None => Ok(Outcome {
                passed: 0,
                error: Some(match status.code() {
                    Some(c) => format!("exited with status {c} before reporting"),
                    None => "killed by a limit before reporting".to_owned(),
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        let s = Sandbox::detect();
        // The test suite's machines have python3 (the e2e tests need it).
        assert!(s.python.is_some(), "python3 is needed to test the sandbox");
        s
    }

    #[tokio::test]
    async fn correct_code_passes_and_wrong_code_fails_test_by_test() {
        let s = sandbox();
        let tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"];
        let ok = s
            .run_python("def add(a, b):\n    return a + b\n", &tests)
            .await
            .unwrap();
        assert_eq!((ok.passed, ok.error), (2, None));
        let half = s
            .run_python("def add(a, b):\n    return 3\n", &tests)
            .await
            .unwrap();
        assert_eq!(half.passed, 1);
        assert!(half.error.unwrap().contains("AssertionError"));
        let broken = s.run_python("def add(a, b) return", &tests).await.unwrap();
        assert_eq!(broken.passed, 0);
        assert!(broken.error.unwrap().contains("SyntaxError"));
    }

    #[tokio::test]
    async fn runaway_code_is_stopped_and_the_network_is_closed() {
        let s = sandbox();
        let spin = s
            .run_python("while True:\n    pass\n", &["assert True"])
            .await
            .unwrap();
        assert_eq!(spin.passed, 0);
        let hog = s
            .run_python("x = bytearray(2 << 30)\n", &["assert True"])
            .await
            .unwrap();
        assert_eq!(hog.passed, 0, "{hog:?}");
        assert!(hog.error.unwrap().contains("MemoryError"));
        let net = s
            .run_python(
                "import socket\ndef f():\n    socket.create_connection(('127.0.0.1', 9))\n",
                &["f()"],
            )
            .await
            .unwrap();
        assert_eq!(net.passed, 0);
        assert!(net.error.unwrap().contains("OSError"));
        let chatty = s
            .run_python("while True:\n    print('x' * 1000)\n", &["assert True"])
            .await
            .unwrap();
        assert_eq!(
            chatty.passed, 0,
            "output goes nowhere, the loop is stopped: {chatty:?}"
        );
    }
}
