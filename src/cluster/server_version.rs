//! Which nats-server releases a cluster can trust with acknowledged records: releases
//! before 2.10.23 can lose them when a server is killed, so `hydrant validate` reports such
//! a server and a node joining one warns.

/// The oldest nats-server release known not to lose acknowledged messages when a server
/// process is killed: Jepsen's analysis of NATS found such losses up to 2.10.22 (fixed in
/// 2.10.23), and Hydrant's own tests found 2.9.10's replicas holding different messages
/// at the same sequence after a stream leader was killed.
pub const OLDEST_TRUSTED: (u32, u32, u32) = (2, 10, 23);

/// Why NATS server `server`, running nats-server `version` (as its INFO says), cannot be
/// trusted with acknowledged records, if it cannot. A version that does not read as
/// `major.minor.patch` is not judged.
pub fn version_problem(server: &str, version: &str) -> Option<String> {
    let release = parse(version)?;
    if release >= OLDEST_TRUSTED {
        return None;
    }
    let (major, minor, patch) = OLDEST_TRUSTED;
    Some(format!(
        "NATS server {server} runs nats-server {version}, older than {major}.{minor}.{patch}: \
         such releases can lose acknowledged messages when a server is killed (on 2.9.10 a \
         stream's replicas were seen holding different messages at the same sequence after \
         its leader was killed, so a partition read from one of them misses acknowledged \
         records); upgrade the NATS servers to {major}.{minor}.{patch} or later"
    ))
}

/// `major.minor.patch` of a version such as `2.9.10` or `2.11.0-RC.1`.
fn parse(version: &str) -> Option<(u32, u32, u32)> {
    let core = version.trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(str::parse::<u32>);
    let release = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    parts.next().is_none().then_some(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_before_the_fix_are_reported_and_later_ones_are_not() {
        for old in ["2.9.10", "2.10.22", "1.4.1", "2.10.0-RC.3"] {
            let problem = version_problem("n1", old).unwrap_or_default();
            assert!(
                problem.contains(&format!("NATS server n1 runs nats-server {old}"))
                    && problem.contains("upgrade the NATS servers to 2.10.23 or later"),
                "{old}: {problem}"
            );
        }
        for trusted in [
            "2.10.23", "2.10.100", "2.11.0", "2.15.1", "3.0.0", "v2.12.1",
        ] {
            assert_eq!(version_problem("n1", trusted), None, "{trusted}");
        }
    }

    #[test]
    fn a_version_that_does_not_read_as_a_release_is_not_judged() {
        for odd in ["", "2.9", "2.9.x", "dev", "2.9.10.1"] {
            assert_eq!(version_problem("n1", odd), None, "{odd:?}");
        }
    }
}
