//! The one wasmtime engine every transform runs on: compiled with Cranelift, interruptible
//! by epoch (a background thread ticks every [`TICK`]), with compiled components cached on
//! disk by content hash so a restart does not compile again.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

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
/// start compiled from the same bytes with the same engine.
pub fn compile(path: &Path, bytes: &[u8]) -> Result<Component, String> {
    let engine = engine();
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::digest(bytes);
    let key = format!(
        "{}-{:016x}.cwasm",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        engine_hash.finish()
    );
    let cached = cache_dir().map(|dir| dir.join(key));
    if let Some(cached) = &cached
        && cached.exists()
    {
        // SAFETY: the file was written by `Component::serialize` of this engine
        // configuration (its name carries the engine's compatibility hash) into Hydrant's
        // own cache directory; wasmtime also checks its header before using it.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, cached) } {
            return Ok(component);
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| {
        format!(
            "{} is not a WebAssembly component this host can run: {e:#}",
            path.display()
        )
    })?;
    if let Some(cached) = &cached
        && let Ok(serialized) = component.serialize()
        && let Some(dir) = cached.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        // Written aside and renamed, so a concurrent start never reads half a file.
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        if std::fs::write(&partial, serialized).is_ok() {
            let _ = std::fs::rename(&partial, cached);
        }
    }
    Ok(component)
}
