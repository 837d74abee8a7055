//! Free ports on 127.0.0.1, for servers that must be told their port rather than bind port 0 themselves
//! (etcd, nginx, a reveille child process).

/// `N` distinct free ports on 127.0.0.1 (bound together, then released: another process could take one in
/// between, which would show as a server failing to start).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [_; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    listeners.map(|l| l.local_addr().unwrap().port())
}

/// One free port on 127.0.0.1 (see [`free_ports`]).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}
