use super::*;

/// `serve`'s flags on a command line of their own.
#[derive(clap::Parser)]
struct Serve {
    #[command(flatten)]
    flags: ConfigFile,
}

fn try_cli(args: &[&str]) -> Result<ConfigFile, clap::Error> {
    <Serve as clap::Parser>::try_parse_from(["serve"].iter().chain(args)).map(|s| s.flags)
}

/// The settings `serve` is given by these flags.
fn cli(args: &[&str]) -> ConfigFile {
    try_cli(args).unwrap()
}

#[test]
fn flags_override_file_and_paths_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nhttp = \"127.0.0.1:1000\"\nroutes = \"r.toml\"\n[limits]\nidle_timeout = \"5s\"\n",
    )
    .unwrap();
    let flags = cli(&["--http", "127.0.0.1:2000"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!(cfg.http.port(), 2000);
    assert_eq!(cfg.routes.unwrap(), dir.path().join("r.toml"));
    assert_eq!(cfg.proxy.idle_timeout, Duration::from_secs(5));
    assert_eq!(cfg.proxy.connect_timeout, Settings::default().connect_timeout);
}

#[test]
fn access_log_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\n[log]\nformat = \"json\"\naccess_log_file = \"logs/access.log\"\n\
             access_log_buffer = 65536\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let a = &cfg.access_log;
    assert_eq!(a.file.as_deref(), Some(dir.path().join("logs/access.log").as_path()));
    assert_eq!((a.format, a.buffer), (crate::access_log::Format::Json, 65536));
    let flags = cli(&["--log-format", "text", "--access-log-file", "/var/log/a.log"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!(cfg.access_log.file.as_deref(), Some(Path::new("/var/log/a.log")));
    assert_eq!(cfg.access_log.format, crate::access_log::Format::Text);
    let flags = cli(&["--access-log-buffer", "100"]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("access_log_buffer"), "{e}");
    let cfg = Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap();
    assert_eq!((cfg.access_log.file, cfg.access_log.buffer), (None, 4 * 1024 * 1024));
}

#[test]
fn body_and_stall_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\n[limits]\nbody_timeout = \"7s\"\nmin_body_rate = 0\n\
             request_buffer_size = 0\nrequest_timeout = \"0\"\nsend_timeout = \"9s\"\n\
             [upstream]\nread_timeout = \"11s\"\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let p = &cfg.proxy;
    assert_eq!((p.body_timeout, p.send_timeout, p.upstream_read_timeout), (secs(7), secs(9), secs(11)));
    assert_eq!((p.min_body_rate, p.request_buffer_size, p.request_timeout), (0, 0, None));
    assert_eq!(p.min_body_rate_grace, Settings::default().min_body_rate_grace);
    let flags = cli(&["--request-timeout", "30s", "--body-timeout", "1s"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!((cfg.proxy.request_timeout, cfg.proxy.body_timeout), (Some(secs(30)), secs(1)));
    let flags = cli(&["--upstream-read-timeout", "0s"]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("upstream_read_timeout"), "{e}");
}

#[test]
fn acme_section_and_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(dir.path().join("ca.pem"), "").unwrap();
    let base = "[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:8443\"\n[tls]\ncerts = \"certs\"\n";
    std::fs::write(
        &path,
        format!(
            "{base}[acme]\ndirectory = \"https://ca.test/dir\"\nca_roots = \"ca.pem\"\nhosts = \"all\"\n\
                 challenge = \"tls-alpn-01\"\neager = false\nrenew_before = \"30d\"\n\
                 on_demand_per_client = 3\non_demand_per_minute = 10\non_demand_share = 0.25\n\
                 eab = {{ kid = \"k1\", hmac_key = \"c2VjcmV0\" }}\n"
        ),
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let a = cfg.acme.unwrap();
    assert_eq!(a.directory, "https://ca.test/dir");
    assert_eq!(a.ca_roots.as_deref(), Some(dir.path().join("ca.pem").as_path()), "relative to the file");
    assert_eq!(a.hosts, crate::acme::Hosts::All);
    assert_eq!(a.challenge, crate::acme::Challenge::TlsAlpn01);
    assert!(!a.eager && a.on_demand);
    assert_eq!(a.renew_before, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(a.eab.unwrap().kid, "k1");
    assert_eq!((a.on_demand_per_client, a.on_demand_per_minute, a.budget.on_demand_share), (3, 10, 0.25));

    std::fs::write(&path, format!("{base}[acme]\n")).unwrap();
    let a = Config::resolve(Some(&path), &ConfigFile::default()).unwrap().acme.unwrap();
    assert_eq!(a.directory, crate::acme::LETS_ENCRYPT, "an empty section is Let's Encrypt, flagged services");
    assert_eq!(a.hosts, crate::acme::Hosts::Flagged);
    assert_eq!((a.on_demand_per_client, a.on_demand_per_minute, a.budget.on_demand_share), (5, 30, 0.5));

    for (text, says) in [
            ("[server]\nroutes = \"r.toml\"\n[tls]\ncerts = \"c\"\n[acme]\n", "HTTPS listener"),
            ("[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:1\"\n[etcd]\nendpoints = [\"http://e:1\"]\n[tls]\ncerts = \"c\"\netcd = false\n[acme]\n", "[tls] etcd = false"),
            (&format!("{base}[acme]\ndirectory = \"ftp://x\"\n"), "not an https:// URL"),
            (&format!("{base}[acme]\nca_roots = \"missing.pem\"\n"), "not a readable file"),
            (&format!("{base}[acme]\nchallenge = \"dns-01\"\n"), "unknown variant"),
            (&format!("{base}[acme]\non_demand_share = 1.5\n"), "on_demand_share 1.5 is not between 0 and 1"),
            (&format!("{base}[acme]\nmax_per_domain = 1\n"), "of max_per_domain 1 leaves on-demand orders none"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
}

#[test]
fn admin_token_from_the_file_flag_or_the_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(dir.path().join("token"), "from-the-token-file-0123\nignored\n").unwrap();
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken_file = \"token\"\n").unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!(cfg.admin_token.as_deref(), Some("from-the-token-file-0123"), "relative to the file");
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken = \"inline-token-0123456\"\n").unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!(cfg.admin_token.as_deref(), Some("inline-token-0123456"));
    let flags = cli(&["--admin-token-file", dir.path().join("token").to_str().unwrap()]);
    assert_eq!(Config::resolve(Some(&path), &flags).unwrap().admin_token.as_deref(), Some("from-the-token-file-0123"));
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken = \"short\"\n").unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("shorter than 16"), "{e}");
    let flags = cli(&["--admin-token-file", dir.path().join("missing").to_str().unwrap()]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("admin token file"), "{e}");
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n").unwrap();
    assert_eq!(Config::resolve(Some(&path), &ConfigFile::default()).unwrap().admin_token, None);
}

#[test]
fn admin_limits_and_names_from_the_section_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    let cfg = Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap();
    let a = &cfg.admin_settings;
    assert_eq!((a.header_read_timeout, a.idle_timeout, a.send_timeout), (secs(10), secs(60), secs(30)));
    assert_eq!((a.max_connections, a.max_event_subscribers), (256, 64));
    assert!(a.allowed_hosts.is_empty());
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\n[admin]\nheader_read_timeout = \"3s\"\nidle_timeout = \"20s\"\n\
             max_connections = 32\nmax_event_subscribers = 4\nsend_timeout = \"5s\"\n\
             allowed_hosts = [\"Admin.Example.com\", \"reveille-admin\"]\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let a = &cfg.admin_settings;
    assert_eq!((a.header_read_timeout, a.idle_timeout, a.send_timeout), (secs(3), secs(20), secs(5)));
    assert_eq!((a.max_connections, a.max_event_subscribers), (32, 4));
    assert_eq!(a.allowed_hosts, ["admin.example.com", "reveille-admin"]);
    let flags = cli(&["--admin-max-connections", "8", "--admin-allowed-hosts", "other"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!((cfg.admin_settings.max_connections, cfg.admin_settings.max_event_subscribers), (8, 4));
    assert_eq!(cfg.admin_settings.allowed_hosts, ["other"]);

    for (text, says) in [
        ("max_connections = 0", "at least 1"),
        ("send_timeout = \"0s\"", "send_timeout must be greater than zero"),
        ("allowed_hosts = [\"http://admin.example.com\"]", "admin allowed host \"http://admin.example.com\""),
        ("allowed_hosts = [\"admin.example.com:9090\"]", "no scheme, port or path"),
    ] {
        std::fs::write(&path, format!("[server]\nroutes = \"r.toml\"\n[admin]\n{text}\n")).unwrap();
        let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn node_flag_wins_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[cluster]\nnode = \"edge-1\"\n").unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!(cfg.passivation.node, "edge-1");
    let flags = cli(&["--node", "edge-2"]);
    assert_eq!(Config::resolve(Some(&path), &flags).unwrap().passivation.node, "edge-2");
    let flags = cli(&["--node", "a/b"]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("node name"), "{e}");
}

#[test]
fn http1_server_from_file_and_flag() {
    use crate::proxy::Http1Server;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    let side = |c: Config| c.proxy.http1_server;
    assert_eq!(side(Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap()), Http1Server::Reveille);
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\nhttp1 = \"hyper\"\n").unwrap();
    assert_eq!(side(Config::resolve(Some(&path), &ConfigFile::default()).unwrap()), Http1Server::Hyper);
    assert_eq!(side(Config::resolve(Some(&path), &cli(&["--http1", "reveille"])).unwrap()), Http1Server::Reveille);
    assert!(try_cli(&["--http1", "nginx"]).is_err());
}

#[test]
fn upstream_quickack_from_file_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    assert!(Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap().proxy.upstream_quickack);
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[upstream]\nquickack = false\n").unwrap();
    assert!(!Config::resolve(Some(&path), &ConfigFile::default()).unwrap().proxy.upstream_quickack);
    let flags = cli(&["--upstream-quickack", "true"]);
    assert!(Config::resolve(Some(&path), &flags).unwrap().proxy.upstream_quickack);
}

#[test]
fn cluster_section_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    let text = "[server]\nroutes = \"r.toml\"\n[cluster]\nlease_ttl = \"4s\"\nstop_veto = \"100ms\"\n\
                    activity_interval = \"1s\"\n";
    std::fs::write(&path, text).unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!(cfg.cluster.lease_ttl, secs(4));
    assert_eq!(cfg.cluster.stop_veto, Duration::from_millis(100));
    assert_eq!(cfg.activity_interval, secs(1));
    let flags = cli(&["--lease-ttl", "3s", "--activity-interval", "2s"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!((cfg.cluster.lease_ttl, cfg.activity_interval), (secs(3), secs(2)));
    let flags = cli(&["--lease-ttl", "1s"]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("lease_ttl"), "{e}");
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[cluster]\nleases = 1\n").unwrap();
    assert!(Config::resolve(Some(&path), &ConfigFile::default()).is_err(), "unknown key refused");
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn unknown_keys_and_missing_routes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(&path, "[server]\nhtp = \"127.0.0.1:1000\"\n").unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("htp"), "{e}");
    assert!(e.contains("unknown field `htp`, expected one of") && e.contains("(did you mean `http`?)"), "{e}");
    std::fs::write(&path, "[passivation]\nidle_timout = \"5m\"\n").unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("(did you mean `idle_timeout`?)"), "{e}");
    std::fs::write(&path, "[passivation]\nidle_timeout = \"5\"\n").unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("for example \"5s\" or \"5m\""), "{e}");
    let e = Config::resolve(None, &ConfigFile::default()).unwrap_err();
    assert!(matches!(e, ConfigError::NoRouteSource));
}

#[test]
fn passivation_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(dir.path().join("page.html"), "<p>{{host}} wakes</p><script>{{status_path}}</script>").unwrap();
    std::fs::write(dir.path().join("bad.html"), "<p>no way to know when ready</p>").unwrap();
    let text = |page: &str| {
        format!(
            "[server]\nroutes = \"r.toml\"\n[docker]\nendpoint = \"unix:///run/d.sock\"\n\
                 [passivation]\nidle_timeout = \"0\"\nmax_held = 5\npage_template = \"{page}\"\n"
        )
    };
    std::fs::write(&path, text("page.html")).unwrap();
    let flags = cli(&["--wake-timeout", "7s"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    let p = &cfg.passivation;
    assert_eq!((p.idle_timeout, p.wake_timeout, p.max_held), (Duration::ZERO, Duration::from_secs(7), 5));
    assert_eq!(p.docker.as_deref(), Some("unix:///run/d.sock"));
    assert_eq!(p.stop_timeout, None, "unset: each container's own");
    let html = p.page.render(&crate::passivation::PageValues {
        service: "s",
        host: "h.test",
        state: "starting",
        status_path: "/st",
        retry_after: 1,
    });
    assert_eq!(html, "<p>h.test wakes</p><script>/st</script>");

    std::fs::write(&path, format!("{}stop_timeout = \"3s\"\n", text("page.html"))).unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!(cfg.passivation.stop_timeout, Some(Duration::from_secs(3)));

    std::fs::write(&path, text("bad.html")).unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("status_path"), "{e}");
    std::fs::write(&path, text("missing.html")).unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
    let flags = cli(&["--docker", "ftp://x", "--routes", "r.toml"]);
    let e = Config::resolve(None, &flags).unwrap_err().to_string();
    assert!(e.contains("docker endpoint"), "{e}");
}

#[test]
fn docker_hosts_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), "pem").unwrap();
    }
    let write = |hosts: &str| {
        std::fs::write(
            &path,
            format!("[server]\nroutes = \"r.toml\"\n[docker]\nendpoint = \"unix:///run/d.sock\"\n{hosts}"),
        )
        .unwrap()
    };
    write(
        "[docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n\
             [docker.hosts.dc2]\nendpoint = \"https://docker-2.lan:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\n\
             key = \"key.pem\"\n",
    );
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let p = &cfg.passivation;
    assert_eq!(p.docker.as_deref(), Some("unix:///run/d.sock"), "the default host stays");
    assert_eq!(p.docker_hosts.keys().collect::<Vec<_>>(), ["dc2", "second"]);
    assert_eq!(p.docker_hosts["second"], DockerEndpoint::plain(Some("tcp://127.0.0.1:2375".into())));
    let tls = p.docker_hosts["dc2"].tls.as_ref().unwrap();
    assert_eq!(tls.ca, dir.path().join("ca.pem"), "relative to the config file");
    assert_eq!(tls.key, dir.path().join("key.pem"));
    // The flag still picks the default host.
    let flags = cli(&["--docker", "tcp://10.0.0.9:2375"]);
    assert_eq!(
        Config::resolve(Some(&path), &flags).unwrap().passivation.docker.as_deref(),
        Some("tcp://10.0.0.9:2375")
    );

    let refused = |hosts: &str| {
        write(hosts);
        Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string()
    };
    let cases = [
        ("[docker.hosts.default]\nendpoint = \"tcp://h:1\"\n", "`default` is the host of --docker"),
        ("[docker.hosts.\"a b\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"a b\""),
        ("[docker.hosts.\"a/b\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"a/b\""),
        ("[docker.hosts.\"\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"\""),
        ("[docker.hosts.x]\nendpoint = \"ftp://h:1\"\n", "[docker.hosts.x] docker endpoint \"ftp://h:1\": use"),
        ("[docker.hosts.x]\nendpoint = \"tcp://h\"\n", "needs host:port"),
        ("[docker.hosts.x]\nendpoint = \"https://h:2376\"\n", "needs `ca`, `cert` and `key`"),
        ("[docker.hosts.x]\nendpoint = \"https://h:2376\"\nca = \"ca.pem\"\n", "go together"),
        (
            "[docker.hosts.x]\nendpoint = \"tcp://h:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
            "only for https://",
        ),
        (
            "[docker.hosts.x]\nendpoint = \"https://h:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"no.pem\"\n",
            "cannot read key",
        ),
        ("[docker.hosts.x]\nendpoint = \"tcp://h:1\"\nport = 2\n", "unknown field `port`"),
        ("[docker.hosts.x]\nca = \"ca.pem\"\n", "missing field `endpoint`"),
    ];
    for (hosts, want) in cases {
        let e = refused(hosts);
        assert!(e.contains(want), "{hosts}: {e}");
    }
    let flags = cli(&["--docker", "https://h:2376", "--routes", "r.toml"]);
    let e = Config::resolve(None, &flags).unwrap_err().to_string();
    assert!(e.contains("define it as a named host"), "{e}");
}

#[test]
fn tls_section_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:8443\"\n[tls]\ncerts = \"certs\"\n\
             default_cert = \"main\"\nredirect_port = 443\nhandshake_timeout = \"3s\"\n",
    )
    .unwrap();
    let flags = cli(&["--https-redirect"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!(cfg.https, Some("127.0.0.1:8443".parse().unwrap()));
    let t = &cfg.tls;
    assert_eq!(t.certs_dir.as_deref(), Some(dir.path().join("certs").as_path()));
    assert_eq!(t.default_cert.as_deref(), Some("main"));
    assert!(t.redirect);
    assert_eq!((t.redirect_port, t.handshake_timeout), (Some(443), Duration::from_secs(3)));

    // An HTTPS listener with no certificate source at all is refused.
    let flags = cli(&["--https", "127.0.0.1:0", "--routes", "r.toml"]);
    let e = Config::resolve(None, &flags).unwrap_err().to_string();
    assert!(e.contains("needs certificates"), "{e}");
    // etcd alone is a source.
    let mut flags = flags;
    flags.etcd.endpoints = Some(vec!["http://127.0.0.1:2379".into()]);
    assert!(Config::resolve(None, &flags).is_ok());
}

#[test]
fn file_reading_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\nroutes_settle = \"250ms\"\nmax_file_size = 4096\n\
             [etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!((cfg.routes_settle, cfg.max_file_size), (Duration::from_millis(250), 4096));
    assert_eq!(cfg.etcd.unwrap().max_file_size, 4096, "etcd's TLS files are read within it too");
    let flags = cli(&["--routes-settle", "50ms"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    assert_eq!((cfg.routes_settle, cfg.max_file_size), (Duration::from_millis(50), 4096));
    let d = Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap();
    assert_eq!((d.routes_settle, d.max_file_size), (Duration::from_millis(100), 64 * 1024 * 1024));

    // The config file itself is read within the flag's limit; zero is refused.
    let flags = cli(&["--max-file-size", "16"]);
    let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
    assert!(e.contains("cannot read config file") && e.contains("larger than 16 bytes"), "{e}");
    let flags = cli(&["--max-file-size", "0", "--routes", "r.toml"]);
    let e = Config::resolve(None, &flags).unwrap_err().to_string();
    assert!(e.contains("max_file_size must be greater than zero"), "{e}");
    // So are the files it names: a FIFO as the page template fails at once instead of hanging.
    let fifo = dir.path().join("page.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[passivation]\npage_template = \"page.fifo\"\n").unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
    assert!(e.contains("page.fifo") && e.contains("not a regular file but a FIFO"), "{e}");
}

#[test]
fn trusted_proxies_key_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let list: Vec<String> = cfg.proxy.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(list, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
    assert!(Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap().proxy.trusted_proxies.is_empty());

    // The flag wins over the file.
    let flags = cli(&["--trusted-proxies", "172.16.0.0/12,2001:db8::/32"]);
    let cfg = Config::resolve(Some(&path), &flags).unwrap();
    let list: Vec<String> = cfg.proxy.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(list, ["172.16.0.0/12", "2001:db8::/32"]);

    // A bad entry is refused, by name, in the file and on the command line.
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n")
        .unwrap();
    let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert!(e.to_string().contains("trusted proxy \"10.0.0.300/8\""), "{e}");
    let e = try_cli(&["--trusted-proxies", "10.0.0.0/8,lan"]).err().unwrap();
    assert!(e.to_string().contains("trusted proxy \"lan\""), "{e}");
}

#[test]
fn moved_keys_are_refused_in_their_old_place_with_the_new_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    for (old, new) in [
        ("node = \"edge-1\"", "[passivation] node moved: write it as `node` in [cluster]"),
        (
            "activity_interval = \"1s\"",
            "[passivation] activity_interval moved: write it as `activity_interval` in [cluster]",
        ),
        ("docker = \"unix:///run/d.sock\"", "[passivation] docker moved: write it as `endpoint` in [docker]"),
        ("docker_timeout = \"5s\"", "[passivation] docker_timeout moved: write it as `timeout` in [docker]"),
    ] {
        std::fs::write(&path, format!("[server]\nroutes = \"r.toml\"\n[passivation]\n{old}\n")).unwrap();
        // `reveille check` reads the file with `load` too, and prints this error.
        let e = ConfigFile::load(&path, crate::fsread::DEFAULT_MAX_SIZE).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{old}: {e:?}");
        let e = e.to_string();
        assert!(e.contains(new) && e.contains("line 4"), "{old}: {e}");
        let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
        assert!(e.contains(new), "{old}: {e}");
    }
    // In their new places they are read.
    std::fs::write(
        &path,
        "[server]\nroutes = \"r.toml\"\n[cluster]\nnode = \"edge-1\"\nactivity_interval = \"1s\"\n\
         [docker]\nendpoint = \"unix:///run/d.sock\"\ntimeout = \"5s\"\n",
    )
    .unwrap();
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    assert_eq!((cfg.passivation.node.as_str(), cfg.activity_interval), ("edge-1", secs(1)));
    assert_eq!(cfg.passivation.docker.as_deref(), Some("unix:///run/d.sock"));
    assert_eq!(cfg.passivation.docker_timeout, secs(5));
    // Unknown keys are still refused, in every section.
    for section in
        ["server", "log", "limits", "upstream", "etcd", "passivation", "tls", "cluster", "docker", "acme", "admin"]
    {
        std::fs::write(&path, format!("[{section}]\nnope = 1\n")).unwrap();
        let e = Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string();
        assert!(e.contains("unknown field `nope`"), "[{section}]: {e}");
    }
}

#[test]
fn runtimes_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), "pem").unwrap();
    }
    let write = |text: &str| std::fs::write(&path, format!("[server]\nroutes = \"r.toml\"\n{text}")).unwrap();
    write(
        "[runtimes.pod]\nkind = \"podman\"\nendpoint = \"unix:///run/podman/podman.sock\"\n\
         [runtimes.dc2]\nkind = \"docker\"\nendpoint = \"https://docker-2.lan:2376\"\nca = \"ca.pem\"\n\
         cert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n",
    );
    let cfg = Config::resolve(Some(&path), &ConfigFile::default()).unwrap();
    let p = &cfg.passivation;
    assert_eq!(p.runtimes.keys().collect::<Vec<_>>(), ["dc2", "pod"]);
    assert_eq!(p.runtimes["pod"].kind, crate::runtime::RuntimeKind::Podman);
    assert_eq!(p.runtimes["pod"].endpoint, DockerEndpoint::plain(Some("unix:///run/podman/podman.sock".into())));
    assert_eq!(p.runtimes["dc2"].kind, crate::runtime::RuntimeKind::Docker);
    let tls = p.runtimes["dc2"].endpoint.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.path().join("cert.pem"), "relative to the config file");
    assert_eq!(p.docker_hosts.keys().collect::<Vec<_>>(), ["second"], "the older table still works beside it");
    let file = ConfigFile::load(&path, 1 << 20).unwrap();
    let mut names = runtime_kinds(&file).map(|(n, _)| n).collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, ["dc2", "pod", "second"]);

    let refused = |text: &str| {
        write(text);
        Config::resolve(Some(&path), &ConfigFile::default()).unwrap_err().to_string()
    };
    let cases = [
        ("[runtimes.x]\nkind = \"nomad\"\nendpoint = \"tcp://h:1\"\n", "unknown variant `nomad`"),
        ("[runtimes.x]\nendpoint = \"tcp://h:1\"\n", "missing field `kind`"),
        ("[runtimes.x]\nkind = \"podman\"\n", "missing field `endpoint`"),
        ("[runtimes.x]\nkind = \"podman\"\nendpoint = \"tcp://h:1\"\nport = 2\n", "unknown field `port`"),
        ("[runtimes.x]\nkind = \"podman\"\nendpoint = \"ftp://h:1\"\n", "[runtimes.x] docker endpoint \"ftp://h:1\""),
        ("[runtimes.x]\nkind = \"podman\"\nendpoint = \"https://h:2376\"\n", "[runtimes.x] docker endpoint"),
        ("[runtimes.x]\nkind = \"docker\"\nendpoint = \"https://h:2376\"\nca = \"ca.pem\"\n", "go together"),
        ("[runtimes.default]\nkind = \"podman\"\nendpoint = \"tcp://h:1\"\n", "[runtimes.default] `default` is"),
        ("[runtimes.\"a b\"]\nkind = \"podman\"\nendpoint = \"tcp://h:1\"\n", "name \"a b\""),
        (
            "[runtimes.two]\nkind = \"podman\"\nendpoint = \"tcp://h:1\"\n[docker.hosts.two]\nendpoint = \"tcp://h:2\"\n",
            "[runtimes.two] and [docker.hosts.two] both define runtime \"two\"",
        ),
    ];
    for (text, want) in cases {
        let e = refused(text);
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn http2_server_from_file_and_flag() {
    use crate::proxy::Http2Server;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reveille.toml");
    // reveille's own by default; hyper's when the file or a flag asks, the flag winning over the file.
    assert_eq!(Config::resolve(None, &cli(&["--routes", "r.toml"])).unwrap().proxy.http2, Http2Server::Reveille);
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\nhttp2 = \"hyper\"\n").unwrap();
    assert_eq!(Config::resolve(Some(&path), &ConfigFile::default()).unwrap().proxy.http2, Http2Server::Hyper);
    let flags = cli(&["--http2", "reveille"]);
    assert_eq!(Config::resolve(Some(&path), &flags).unwrap().proxy.http2, Http2Server::Reveille);
    std::fs::write(&path, "[server]\nroutes = \"r.toml\"\nhttp2 = \"h3\"\n").unwrap();
    assert!(Config::resolve(Some(&path), &ConfigFile::default()).is_err());
}
