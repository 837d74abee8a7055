//! The docker CLI, and the image every container test and the Docker labs (passivation, cluster) run: no image
//! can be pulled here, so it is built `FROM scratch` with Debian's static busybox (`busybox-static`); the labs'
//! containers and image, removed when they end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Runs the docker CLI: its trimmed stdout, or why it failed.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why a lab that runs containers cannot run here, if it cannot: a file of `needs` (path, what installs it)
/// missing, or Docker not usable.
pub fn unusable(needs: &[(&str, &str)]) -> Option<String> {
    if let Some((path, what)) = needs.iter().find(|(path, _)| !Path::new(path).exists()) {
        return Some(format!("{path} not found ({what})"));
    }
    docker(&["version", "--format", "{{.Server.Version}}"]).err().map(|e| format!("Docker is not usable: {e}"))
}

/// How to build the busybox image.
pub struct BusyboxImage<'a> {
    /// The image's tag; `/www/index.html` says "hello from <tag>".
    pub tag: &'a str,
    /// Copy every file under `<context>/overlay/` to the same path in the image (the caller puts them there).
    pub overlay: bool,
    /// `docker build --no-cache`: concurrent builds of the same layers, one of which removes its image, must not
    /// pull a cached parent layer from under another ("unknown parent image ID").
    pub no_cache: bool,
}

impl BusyboxImage<'_> {
    /// Writes the build context into `context` (created if needed) and builds the image: `/bin/busybox` as the
    /// entrypoint, `/www/index.html`, and the overlay if asked for.
    pub fn build(&self, context: &Path) -> Result<(), String> {
        if !Path::new(BUSYBOX).exists() {
            return Err(format!("{BUSYBOX} not found: install Debian's busybox-static (scripts/test does)"));
        }
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(context.join("www")).map_err(|e| io("create the build context", e))?;
        std::fs::copy(BUSYBOX, context.join("busybox")).map_err(|e| io(&format!("copy {BUSYBOX}"), e))?;
        std::fs::write(context.join("www/index.html"), format!("hello from {}\n", self.tag))
            .map_err(|e| io("write index.html", e))?;
        let mut dockerfile = String::from("FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n");
        if self.overlay {
            dockerfile.push_str("COPY overlay/ /\n");
        }
        dockerfile.push_str("ENTRYPOINT [\"/bin/busybox\"]\n");
        std::fs::write(context.join("Dockerfile"), dockerfile).map_err(|e| io("write the Dockerfile", e))?;
        let context = context.to_str().ok_or("the build context's path is not UTF-8")?;
        let mut args = vec!["build"];
        if self.no_cache {
            args.push("--no-cache");
        }
        args.extend(["-q", "-t", self.tag, context]);
        docker(&args).map(|_| ())
    }
}

/// The port the containers' HTTP servers listen on.
pub const CONTAINER_PORT: u16 = 8080;

/// Pause before each cold-start measurement, for Docker to finish with the previous stop.
pub const SETTLE: Duration = Duration::from_millis(300);

/// The `web` container's script: `busybox httpd` serving /www on [`CONTAINER_PORT`].
pub fn web_script() -> String {
    container_script(&format!("httpd -f -p {CONTAINER_PORT} -h /www"), None)
}

/// A container's script: run `serve` (in the background) after `delay` seconds; exit at once on SIGTERM.
pub fn container_script(serve: &str, delay: Option<u64>) -> String {
    let sleep = delay.map(|d| format!("sleep {d}; ")).unwrap_or_default();
    format!("trap \"exit 0\" TERM; {sleep}{serve} & wait")
}

/// How many times Docker reported `event` (`start`, `die`, ...) for `container` from `since` to `until` (Unix
/// seconds, with their fraction): `docker events --since .. --until .. --filter ..`.
pub fn event_count(container: &str, event: &str, since: f64, until: f64) -> Result<usize, String> {
    let out = docker(&[
        "events",
        "--since",
        &format!("{since:.6}"),
        "--until",
        &format!("{until:.6}"),
        "--filter",
        &format!("container={container}"),
        "--filter",
        &format!("event={event}"),
        "--format",
        "{{.Action}}",
    ])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Whether a body is the image's `/www/index.html` ("hello from <tag>").
pub fn is_hello(body: &[u8]) -> bool {
    body.starts_with(b"hello from ")
}

/// The image and containers made for this run. Dropping it (also while unwinding from a panic) removes every
/// container, then the image.
#[derive(Default)]
pub struct DockerThings {
    pub image: Option<String>,
    containers: Vec<String>,
}

impl DockerThings {
    /// Builds the `FROM scratch` busybox image in `dir`; its tag is unique to this process. With `self_at`, the
    /// image also holds the running executable at that path and the shared libraries it needs.
    pub fn build_image(&mut self, dir: &Path, self_at: Option<&str>) -> Result<String, String> {
        let tag = format!("reveille-bench-image-{}", std::process::id());
        let ctx = dir.join("image");
        if let Some(path) = self_at {
            copy_self(&ctx.join("overlay"), path)?;
        }
        // Registered before the build: a half-built image is removed as well.
        self.image = Some(tag.clone());
        BusyboxImage { tag: &tag, overlay: self_at.is_some(), no_cache: true }.build(&ctx)?;
        Ok(tag)
    }

    /// Creates (does not start) a container `reveille-bench-<kind>-<pid>` running `busybox sh -c <script>`.
    pub fn create(&mut self, image: &str, kind: &str, script: &str) -> Result<String, String> {
        let name = format!("reveille-bench-{kind}-{}", std::process::id());
        self.containers.push(name.clone());
        docker(&["create", "--name", &name, image, "sh", "-c", script])?;
        Ok(name)
    }
}

impl Drop for DockerThings {
    fn drop(&mut self) {
        for name in &self.containers {
            if let Err(e) = docker(&["rm", "-f", name]) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Some(tag) = &self.image {
            if let Err(e) = docker(&["rmi", "-f", tag]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Copies this executable to `root/<path>` and the shared libraries `ldd` lists for it to the same paths under
/// `root`, so that it runs in a `FROM scratch` image.
fn copy_self(root: &Path, path: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    copy_binary(root, &exe, path)
}

/// Copies the executable `exe` to `root/<path>` and the shared libraries `ldd` lists for it to the same paths
/// under `root` (e.g. a [`BusyboxImage`]'s `overlay/`), so that it runs in a `FROM scratch` image.
pub fn copy_binary(root: &Path, exe: &Path, path: &str) -> Result<(), String> {
    let exe = exe.to_path_buf();
    let out = Command::new("ldd").arg(&exe).output().map_err(|e| format!("cannot run ldd: {e}"))?;
    if !out.status.success() {
        return Err(format!("ldd {}: {}", exe.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut files = vec![(exe, PathBuf::from(path))];
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push((PathBuf::from(path), PathBuf::from(path)));
        }
    }
    for (from, to) in files {
        let dest = root.join(to.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(&from, &dest).map_err(|e| format!("copy {}: {e}", from.display()))?;
    }
    Ok(())
}
