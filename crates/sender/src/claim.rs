//! One sender per name and receiver on this host, settled before the first
//! connection.
//!
//! Two senders of one host that announce one `--name` to one receiver
//! (two cameras of one Pi, both with the default name) would take the
//! name from each other there until one found the other's record of
//! handled frames and renamed itself (`pipeline::Delivery::judge`): the
//! one that was there first, its frames then split between two
//! directories. A sender therefore claims its name first, with a Linux
//! abstract socket named after the name and the receiver's address: the
//! kernel frees it when the process ends, however it ends, so a restarted
//! sender finds it free and keeps its name. A second sender finds it taken
//! and goes on as `NAME-pidPID` from its first frame. (Senders that do not
//! share the host's network namespace, e.g. in containers, do not see each
//! other's claims; the record check at the receiver still parts them.)

use std::time::{Duration, Instant};

/// How long a sender waits for a taken name to come free: a restart may
/// overlap the old process's last seconds.
pub const WAIT: Duration = Duration::from_secs(3);

/// Set (to any value, 0 too) to skip the claim: the tests of the record
/// check use it.
pub const SKIP_ENV: &str = "BITMASK_SEND_NO_NAME_CLAIM";

/// A held claim: kept for the life of the process.
pub struct Claim {
    #[cfg(target_os = "linux")]
    _sock: std::os::unix::net::UnixDatagram,
}

/// The receiver `to` names, as one text however it is spelt: its first
/// resolved address (`localhost:5000`, `127.0.0.1:5000` and
/// `[::ffff:127.0.0.1]:5000` are one receiver), else `to` as it is (a name
/// that does not resolve yet).
fn receiver(to: &str) -> String {
    use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
    match to.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => {
            let ip = match a.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        None => to.to_owned(),
    }
}

/// The abstract socket name for `name` sent to `to` (FNV-1a, 64 bits, of
/// both: names may be 255 bytes, abstract names at most 107).
fn key(name: &str, to: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0]).chain(to.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("bitmask-send/{h:016x}")
}

/// Claims `name` for `to`, waiting up to `wait` for another sender of this
/// host to let it go: `Ok(Some(claim))` when it is this sender's, `Ok(None)`
/// when another holds it, `Err(why)` when no claim can be made here (not
/// Linux, or [`SKIP_ENV`] set: the name is then used as it is).
pub fn claim(name: &str, to: &str, wait: Duration) -> Result<Option<Claim>, String> {
    if std::env::var_os(SKIP_ENV).is_some() {
        return Err(format!("{SKIP_ENV} is set"));
    }
    claim_os(&key(name, &receiver(to)), name, to, wait)
}

#[cfg(target_os = "linux")]
fn claim_os(key: &str, name: &str, to: &str, wait: Duration) -> Result<Option<Claim>, String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = SocketAddr::from_abstract_name(key.as_bytes()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut said = false;
    loop {
        match UnixDatagram::bind_addr(&addr) {
            Ok(sock) => return Ok(Some(Claim { _sock: sock })),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // (a stop signal ends the wait: the run ends anyway)
                if start.elapsed() >= wait || crate::pipeline::stop_requested().is_some() {
                    return Ok(None);
                }
                if !said && start.elapsed() >= Duration::from_millis(300) {
                    said = true;
                    log::info!(
                        "another bitmask-send on this host sends as {name:?} to {to}: waiting up \
                         to {} s for it to end",
                        wait.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn claim_os(_: &str, _: &str, _: &str, _: Duration) -> Result<Option<Claim>, String> {
    Err("name claims need Linux".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_once_per_receiver_and_freed_with_its_claim() {
        // (a name no other test or sender uses)
        let name = format!("claim-test-{}", std::process::id());
        let first = claim(&name, "10.9.9.9:5000", Duration::ZERO).unwrap();
        assert!(first.is_some());
        assert!(claim(&name, "10.9.9.9:5000", Duration::ZERO)
            .unwrap()
            .is_none());
        // the same name to another receiver, another name to this one
        let other_to = claim(&name, "10.9.9.9:5001", Duration::ZERO).unwrap();
        assert!(other_to.is_some());
        let other_name = claim(&format!("{name}x"), "10.9.9.9:5000", Duration::ZERO).unwrap();
        assert!(other_name.is_some());
        // given up while another waits: the waiter gets it
        let waiter = std::thread::spawn({
            let name = name.clone();
            move || {
                claim(&name, "10.9.9.9:5000", Duration::from_secs(5))
                    .unwrap()
                    .is_some()
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn one_receiver_spelt_two_ways_is_one_claim() {
        let name = format!("claim-spelling-{}", std::process::id());
        let first = claim(&name, "127.0.0.1:5999", Duration::ZERO).unwrap();
        assert!(first.is_some());
        for other in ["localhost:5999", "[::ffff:127.0.0.1]:5999"] {
            assert!(
                claim(&name, other, Duration::ZERO).unwrap().is_none(),
                "{other}"
            );
        }
        assert_eq!(receiver("no-such-host.invalid:1"), "no-such-host.invalid:1");
    }

    #[test]
    fn keys_fit_an_abstract_socket_name() {
        let k = key(&"é".repeat(127), "[fe80::1%eth0]:65535");
        assert!(k.len() <= 107, "{k}");
        assert_ne!(key("a", "bc"), key("ab", "c"));
    }
}
