//! Real Docker containers for tests. No image can be pulled here, so the test image is built `FROM scratch`
//! with Debian's static busybox (`busybox-static`). Every image and container has a unique name and is removed
//! on drop.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const BUSYBOX: &str = "/bin/busybox";

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(kind: &str) -> String {
    format!("reveille-test-{kind}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI must be installed");
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `FROM scratch` image holding busybox and `/www/index.html` ("hello from <tag>").
pub struct TestImage {
    pub tag: String,
}

impl TestImage {
    pub fn build() -> TestImage {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} not found: install Debian's busybox-static (scripts/test does)"
        );
        let tag = unique("image");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(BUSYBOX, dir.path().join("busybox")).unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/index.html"), format!("hello from {tag}\n")).unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        docker(&["build", "-q", "-t", &tag, dir.path().to_str().unwrap()]);
        TestImage { tag }
    }

    /// Creates (does not start) a container running `busybox <args...>`.
    pub fn container(&self, args: &[&str]) -> TestContainer {
        let name = unique("ctr");
        let mut create = vec!["create", "--name", &name, &self.tag];
        create.extend_from_slice(args);
        docker(&create);
        TestContainer { name }
    }

    /// A container serving /www over HTTP on port 8080.
    pub fn web(&self) -> TestContainer {
        self.container(&["httpd", "-f", "-p", "8080", "-h", "/www"])
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
