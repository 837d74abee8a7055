//! The docker CLI, and the image every container test and the passivation lab run: no image can be pulled here,
//! so it is built `FROM scratch` with Debian's static busybox (`busybox-static`).

use std::path::Path;
use std::process::{Command, Stdio};

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
