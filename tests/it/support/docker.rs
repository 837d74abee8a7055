//! Real Docker containers for tests. No image can be pulled here, so the test image is built `FROM scratch`
//! with Debian's static busybox (`busybox-static`). Every image and container has a unique name and is removed
//! on drop.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use testkit::docker::BusyboxImage;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(kind: &str) -> String {
    format!("reveille-test-{kind}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// Runs a docker CLI command that must succeed: its trimmed stdout.
fn docker(args: &[&str]) -> String {
    testkit::docker::docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A `FROM scratch` image holding busybox and `/www/index.html` ("hello from <tag>").
pub struct TestImage {
    pub tag: String,
}

impl TestImage {
    pub fn build() -> TestImage {
        let tag = unique("image");
        let dir = tempfile::tempdir().unwrap();
        let image = BusyboxImage { tag: &tag, overlay: false, no_cache: true };
        image.build(dir.path()).unwrap_or_else(|e| panic!("building the test image: {e}"));
        TestImage { tag }
    }

    /// Creates (does not start) a container running `busybox <args...>`.
    pub fn container(&self, args: &[&str]) -> TestContainer {
        self.container_with(&[], args)
    }

    /// Creates (does not start) a container with `docker create` options (e.g. `--stop-timeout 1`) running
    /// `busybox <args...>`.
    pub fn container_with(&self, options: &[&str], args: &[&str]) -> TestContainer {
        let name = unique("ctr");
        let mut create = vec!["create", "--name", &name];
        create.extend_from_slice(options);
        create.push(&self.tag);
        create.extend_from_slice(args);
        docker(&create);
        TestContainer { name }
    }

    /// A container serving /www over HTTP on port 8080.
    pub fn web(&self) -> TestContainer {
        self.container(&["httpd", "-f", "-p", "8080", "-h", "/www"])
    }

    /// A container that runs `script` with busybox `sh`, then serves /www on port 8080 and exits at once on
    /// `docker stop` (PID 1 ignores SIGTERM unless it traps it).
    pub fn web_after(&self, script: &str) -> TestContainer {
        let cmd = format!("trap 'exit 0' TERM; {script} httpd -f -p 8080 -h /www & wait");
        self.container(&["sh", "-c", &cmd])
    }

    /// A container that runs but never listens, and exits at once on `docker stop`.
    pub fn idle(&self) -> TestContainer {
        self.container(&["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"])
    }
}

/// How many times Docker reports `event` for `container` since `since` (Unix seconds).
pub fn event_count(container: &str, event: &str, since: u64) -> usize {
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    testkit::docker::event_count(container, event, since as f64, until as f64).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a docker CLI command that must succeed.
pub fn docker_cli(args: &[&str]) -> String {
    docker(args)
}

/// A Unix-socket forwarder in front of the Docker socket that can be cut (every connection dropped, new ones
/// refused) and restored: "Docker is unreachable" without touching the real engine.
pub struct DockerSocketProxy {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DockerSocketProxy {
    pub fn start() -> DockerSocketProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let mut p = DockerSocketProxy { path, _dir: dir, task: None };
        p.restore();
        p
    }

    /// The endpoint to give reveille.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn restore(&mut self) {
        self.cut();
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                conns.spawn(async move {
                    let Ok(mut docker) = tokio::net::UnixStream::connect("/var/run/docker.sock").await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut docker).await;
                });
            }
        }));
    }
}

impl Drop for DockerSocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.tag]).output();
    }
}

pub struct TestContainer {
    pub name: String,
}

impl TestContainer {
    /// The state Docker reports (`created`, `running`, `paused`, `exited`...), via the CLI, to check reveille's
    /// view against Docker's own.
    pub fn docker_state(&self) -> String {
        docker(&["inspect", "-f", "{{.State.Status}}", &self.name])
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}
