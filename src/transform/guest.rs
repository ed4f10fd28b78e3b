//! One instance of a transform component: its own store (memory cap, WASI context with no
//! filesystem, network or environment, output to the service log) and the calls into it.

use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::engine::{TICK, engine};
use super::guest_log::GuestLog;

wasmtime::component::bindgen!({
    path: "transforms/wit",
    world: "transformer",
});

pub use self::hydrant::transform::types::OutcomeResult;

/// Why a call into a guest did not return outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure {
    /// `Transform.Timeout`, `Transform.OutOfMemory` or `Transform.Trap`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// What a store holds for its guest.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the cap, remembering that it did (so the trap that follows is
/// reported as out of memory).
struct MemoryCap {
    max_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A compiled, linked component ready to be instantiated.
pub struct GuestTemplate {
    pre: TransformerPre<GuestState>,
}

impl GuestTemplate {
    /// Links `component` against the sandbox's imports (WASI without filesystem, network or
    /// environment); fails when it imports anything else.
    pub fn link(component: &wasmtime::component::Component) -> Result<Self, String> {
        let mut linker: Linker<GuestState> = Linker::new(engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| format!("cannot set up the sandbox: {e:#}"))?;
        let pre: InstancePre<GuestState> = linker
            .instantiate_pre(component)
            .map_err(|e| format!("cannot link: {e:#}"))?;
        let pre = TransformerPre::new(pre).map_err(|e| {
            format!("does not export the hydrant:transform/transformer world: {e:#}")
        })?;
        Ok(Self { pre })
    }

    /// A new instance with `max_memory_bytes` of memory whose output goes to `log`, configured
    /// with `config` (JSON).
    pub fn instantiate(
        &self,
        max_memory_bytes: usize,
        log: &(GuestLog, GuestLog),
        config: &str,
        timeout: std::time::Duration,
    ) -> Result<GuestInstance, GuestFailure> {
        let wasi = WasiCtx::builder()
            .stdout(log.0.clone())
            .stderr(log.1.clone())
            .build();
        let mut store = Store::new(
            engine(),
            GuestState {
                wasi,
                table: ResourceTable::new(),
                memory: MemoryCap {
                    max_bytes: max_memory_bytes,
                    exceeded: false,
                },
            },
        );
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        let mut instance = GuestInstance {
            store,
            bindings,
            timeout,
        };
        instance.store.set_epoch_deadline(ticks(timeout));
        match instance
            .bindings
            .call_configure(&mut instance.store, config)
        {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(GuestFailure {
                code: "Transform.ConfigurationRefused",
                message: format!("configure refused the configuration: {message}"),
            }),
            Err(e) => Err(classify(&instance.store, e)),
        }
    }
}

/// Epoch ticks in `timeout` (at least one).
fn ticks(timeout: std::time::Duration) -> u64 {
    (timeout.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
}

/// A configured instance, reused from batch to batch until it fails.
pub struct GuestInstance {
    store: Store<GuestState>,
    bindings: Transformer,
    timeout: std::time::Duration,
}

impl GuestInstance {
    /// Calls `transform` with `records`, stopped after the timeout.
    pub fn transform(&mut self, records: &[Record]) -> Result<Vec<Outcome>, GuestFailure> {
        self.store.set_epoch_deadline(ticks(self.timeout));
        self.bindings
            .call_transform(&mut self.store, records)
            .map_err(|e| classify(&self.store, e))
    }
}

/// Names the cause of a failed call: a timeout, memory refused past the cap, or a trap.
fn classify(store: &Store<GuestState>, error: wasmtime::Error) -> GuestFailure {
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return GuestFailure {
            code: "Transform.Timeout",
            message: "the transform ran past timeout_ms and was stopped".into(),
        };
    }
    if store.data().memory.exceeded {
        return GuestFailure {
            code: "Transform.OutOfMemory",
            message: format!(
                "the transform needed more than max_memory_mib ({} MiB) and was stopped: {error:#}",
                store.data().memory.max_bytes / (1024 * 1024)
            ),
        };
    }
    GuestFailure {
        code: "Transform.Trap",
        message: format!("the transform trapped: {error:#}"),
    }
}
