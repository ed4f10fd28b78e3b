//! The one wasmtime engine every transform runs on: compiled with Cranelift, interruptible
//! by epoch (a background thread ticks every [`TICK`]), with compiled components cached on
//! disk (see [`ComponentCache`]) so a restart does not compile again.

use std::hash::Hash as _;
use std::io::Write as _;
#[cfg(test)]
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of `timeout_ms`.
pub const TICK: Duration = Duration::from_millis(5);

/// The shared engine (its epoch ticker starts with it).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("the transform engine's settings are valid");
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("hydrant-wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .expect("start the transform timeout thread");
        engine
    })
}

/// Where compiled components are kept: `HYDRANT_CACHE_DIR`, else `~/.cache/hydrant`, under
/// `wasm/`; `None` when neither is known (components are then compiled at every start).
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("HYDRANT_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/hydrant")))?;
    Some(base.join("wasm"))
}

/// Compiles the component in `bytes` (read from `path`), or loads the artefact an earlier
/// start compiled from the same bytes with the same engine, if the cache can be trusted.
pub fn compile(path: &Path, bytes: &[u8]) -> Result<Component, String> {
    let cache = cache_dir().and_then(|dir| ComponentCache::open(&dir));
    compile_with(engine(), cache.as_ref(), path, bytes).map(|(component, _)| component)
}

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and stored in the cache, if there is one).
    Compiled,
    /// Loaded from a verified artefact in the cache.
    Cached,
}

/// [`compile`] with an explicit engine and cache.
pub fn compile_with(
    engine: &Engine,
    cache: Option<&ComponentCache>,
    path: &Path,
    bytes: &[u8],
) -> Result<(Component, Origin), String> {
    let key = artefact_key(engine, bytes);
    if let Some(component) = cache.and_then(|cache| cache.load(engine, &key)) {
        return Ok((component, Origin::Cached));
    }
    let component = Component::new(engine, bytes).map_err(|e| {
        format!(
            "{} is not a WebAssembly component this host can run: {e:#}",
            path.display()
        )
    })?;
    if let Some(cache) = cache
        && let Ok(serialized) = component.serialize()
    {
        cache.store(&key, &serialized);
    }
    Ok((component, Origin::Compiled))
}

/// The cache name of `bytes` compiled by `engine`: a SHA-256 over the module, the engine's
/// compatibility hash (its target, compiler settings, features and wasmtime version) and
/// Hydrant's version, so it is stable across builds of the same versions and changes with
/// any of them.
fn artefact_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.0.update(Sha256::digest(bytes));
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex(&hasher.0.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds what a `Hash` implementation writes into SHA-256, a hash that stays the same
/// across Rust releases (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 state is read")
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Compiled components on disk. Loading one runs its native code inside the service, so an
/// artefact is loaded only from a directory no other user can write, and only if it carries
/// a MAC made with this cache's secret when this service wrote it: `<key>.cwasm` holds the
/// artefact followed by an HMAC-SHA256 of its key and bytes under `cache.key` (32 random bytes, readable by
/// the owner only). Anything else is compiled again.
#[derive(Debug)]
pub struct ComponentCache {
    dir: PathBuf,
    secret: [u8; 32],
}

/// Bytes of the MAC after each artefact.
const MAC_LEN: usize = 32;

impl ComponentCache {
    /// The cache in `dir` (created owner-only if missing), or `None` (with a warning) when
    /// it cannot be trusted or used.
    pub fn open(dir: &Path) -> Option<Self> {
        match Self::try_open(dir) {
            Ok(cache) => Some(cache),
            Err(reason) => {
                tracing::warn!(
                    cache = %dir.display(),
                    "not using the compiled-transform cache: {reason}; transforms are compiled at every start"
                );
                None
            }
        }
    }

    fn try_open(dir: &Path) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
        check_private(dir)?;
        let key_path = dir.join("cache.key");
        let secret = match std::fs::read(&key_path) {
            Ok(bytes) => {
                check_private(&key_path)?;
                bytes
                    .try_into()
                    .map_err(|_| format!("{} is not 32 bytes", key_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_secret(&key_path)?,
            Err(e) => return Err(format!("cannot read {}: {e}", key_path.display())),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            secret,
        })
    }

    /// The MAC state for artefact `key`: the name is covered too, so one module's
    /// artefact cannot stand in for another's.
    fn mac(&self, key: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The artefact `key`, if present, private, and carrying a valid MAC.
    fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        if let Err(reason) = check_private(&path) {
            tracing::warn!("not loading the compiled transform: {reason}");
            return None;
        }
        let split = bytes.len().checked_sub(MAC_LEN)?;
        let (artefact, tag) = bytes.split_at(split);
        let mut mac = self.mac(key);
        mac.update(artefact);
        if mac.verify_slice(tag).is_err() {
            tracing::warn!(
                artefact = %path.display(),
                "a compiled transform in the cache does not carry this service's MAC (changed \
                 by someone else, or damaged); compiling the module again"
            );
            return None;
        }
        // SAFETY: these exact bytes were written by `Component::serialize` of this engine
        // configuration (the key covers the engine's compatibility hash) and MACed with the
        // secret only this user can read, in a directory only this user can write;
        // wasmtime also checks the artefact's header before using it.
        unsafe { Component::deserialize(engine, artefact) }.ok()
    }

    /// Stores `artefact` as `key`, with its MAC: written aside and renamed, so a
    /// concurrent start never reads half a file.
    fn store(&self, key: &str, artefact: &[u8]) {
        let path = self.path(key);
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let mut mac = self.mac(key);
        mac.update(artefact);
        let tag = mac.finalize().into_bytes();
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut file| {
                file.write_all(artefact)?;
                file.write_all(&tag)
            })
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(artefact = %path.display(), "cannot cache the compiled transform: {error}");
        }
    }
}

/// Creates the cache's secret: 32 random bytes, readable by the owner only.
fn new_secret(path: &Path) -> Result<[u8; 32], String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no random bytes for its key: {e}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(&secret))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(secret)
}

/// Refuses a path owned by another user, or writable by its group or by others.
fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, not to this service's user {me}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} can be written by other users (mode {:o}); make it `chmod go-w`",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_engine() -> Engine {
        let mut config = Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    #[test]
    fn artefacts_are_reused_and_a_tampered_one_is_compiled_again() {
        let engine = tiny_engine();
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("wasm");
        let cache = ComponentCache::open(&cache_dir).unwrap();
        let path = Path::new("a.wasm");
        let module_a = b"(component (core module (func (export \"a\"))))";
        let module_b = b"(component (core module (func (export \"b\"))))";
        let compile = |bytes: &[u8]| compile_with(&engine, Some(&cache), path, bytes).unwrap().1;
        assert_eq!(compile(module_a), Origin::Compiled);
        assert_eq!(compile(module_a), Origin::Cached);
        assert_eq!(compile(module_b), Origin::Compiled);
        let artefact_a = cache.path(&artefact_key(&engine, module_a));
        let artefact_b = cache.path(&artefact_key(&engine, module_b));
        assert_eq!(
            std::fs::metadata(&artefact_a).unwrap().mode() & 0o777,
            0o600
        );

        // Another module's valid artefact (with its own MAC) put in A's place.
        std::fs::copy(&artefact_b, &artefact_a).unwrap();
        assert_eq!(compile(module_a), Origin::Compiled, "a swapped artefact");
        assert_eq!(compile(module_a), Origin::Cached, "stored again, verified");

        // A flipped byte inside the artefact, its MAC left as it was.
        let mut bytes = std::fs::read(&artefact_a).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&artefact_a, &bytes).unwrap();
        assert_eq!(compile(module_a), Origin::Compiled, "a changed byte");

        // An artefact with a MAC under another key (someone else's cache.key).
        let other = ComponentCache {
            dir: cache_dir.clone(),
            secret: [7; 32],
        };
        let serialized = Component::new(&engine, module_b)
            .unwrap()
            .serialize()
            .unwrap();
        other.store(&artefact_key(&engine, module_a), &serialized);
        assert_eq!(compile(module_a), Origin::Compiled, "a foreign MAC");
        assert_eq!(compile(module_a), Origin::Cached);
    }

    #[test]
    fn a_cache_other_users_can_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("wasm");
        assert!(ComponentCache::open(&cache_dir).is_some());
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ComponentCache::open(&cache_dir).is_none());
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = cache_dir.join("cache.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            ComponentCache::open(&cache_dir).is_none(),
            "a key others can write"
        );
    }

    #[test]
    fn the_key_is_stable_and_covers_module_and_engine() {
        let engine = tiny_engine();
        let key = artefact_key(&engine, b"(component)");
        assert_eq!(key, artefact_key(&engine, b"(component)"));
        assert_ne!(key, artefact_key(&engine, b"(component) "));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let other_engine = Engine::new(&config).unwrap();
        assert_ne!(key, artefact_key(&other_engine, b"(component)"));
    }
}
