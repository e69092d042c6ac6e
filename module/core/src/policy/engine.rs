//! The Wasm engine, module checks, and the live instance of a policy.

use super::error::{EvalFailure, one_line};
use super::{EvalLimits, LoadError, PolicySpec};
use lockwarden_sdk::abi::{self, Configured, Decision, Output, exports};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, Instant};
use wasmtime::{
    Config, Engine, ExternType, FuncType, Instance, Memory, Module, ResourceLimiter, Store, Trap,
    TypedFunc, ValType, WasmFeatures,
};

/// The most native stack a policy call may use. Stack use is checked
/// explicitly on every function entry; going over is the trap
/// `call stack exhausted`, never a fault. Redis' main thread has 8 MiB.
pub const MAX_WASM_STACK_BYTES: usize = 256 * 1024;

/// The largest input copied into a policy: its settings, or one encoded
/// request (keys, owners and user names included).
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// The most table elements (function references) a policy's tables may hold
/// in total. A Rust policy needs a few dozen to a few thousand.
pub const MAX_TABLE_ELEMENTS: usize = 65_536;

/// The largest function body a policy may have, in bytes of code.
/// Compiling a function takes memory in proportion to its size (up to some
/// 400 bytes per byte of code for pathological bodies), from Redis's
/// allocator, so it counts in `used_memory`; this keeps one load's compile
/// to some 50 MiB. Rust policies' bodies are a few KiB (the example
/// policies: 12 KiB at most).
pub const MAX_FUNCTION_BYTES: usize = 128 * 1024;

/// The deepest nesting of blocks, loops and ifs in a function body (the
/// example policies: 46).
pub const MAX_NESTING: usize = 1024;

/// The room under `maxmemory` a client's `LOCK.POLICY LOAD` needs: its
/// compile's transient memory (some 50 MiB at most, see
/// [`MAX_FUNCTION_BYTES`]) counts in `used_memory`, and pushing that over
/// `maxmemory` would evict keys (held locks among them) or fail other
/// clients' writes with `OOM` while the compile runs.
pub const COMPILE_HEADROOM_BYTES: u64 = 64 << 20;

/// Refuses a compile unless [`COMPILE_HEADROOM_BYTES`] for it and for each
/// of the `running` compiles are left between `used` and `maxmemory` (0: no
/// limit).
pub fn check_compile_headroom(
    maxmemory: u64,
    used: u64,
    running: u64,
) -> Result<(), crate::LockError> {
    let needed = COMPILE_HEADROOM_BYTES.saturating_mul(running.saturating_add(1));
    let left = maxmemory.saturating_sub(used);
    if maxmemory == 0 || left >= needed {
        return Ok(());
    }
    Err(crate::LockError::CompileMemory { needed, left })
}

/// Longest guest-supplied text (a rejection message) put into a load error.
const MAX_GUEST_TEXT_CHARS: usize = crate::error::MAX_REASON_CHARS;

/// Longest list of imports shown when a module imports something.
const MAX_IMPORTS_SHOWN: usize = 8;

/// The Wasm engine policies are compiled with. Cheap to clone; shareable
/// across threads (compile on a background thread, evaluate on the main one).
///
/// The engine is configured to be safe inside a foreign process:
///
/// * no signal handlers: `signals_based_traps(false)`. Out-of-bounds memory
///   and table accesses, division by zero and stack exhaustion are detected by
///   explicit checks in the generated code. (Wasmtime then requires Cranelift's
///   Spectre mitigations for heap and table accesses to be off: they rely on
///   faulting loads from address zero.)
/// * no virtual-memory tricks: zero memory reservation and guard pages and no
///   copy-on-write images, so each linear memory is a plain heap allocation of
///   its current size, bounds-checked explicitly;
/// * fuel metering, a fixed stack limit ([`MAX_WASM_STACK_BYTES`]) and no Wasm
///   backtraces (a trap costs no stack walk or allocation);
/// * only the Wasm features that `rustc --target wasm32-unknown-unknown`
///   emits by default (MVP, mutable globals, sign extension, saturating
///   float-to-int, multi-value, bulk memory, reference types). Threads, shared
///   memory, memory64, multi-memory, SIMD, tail calls, exceptions, GC,
///   extended constants, custom page sizes, wide arithmetic, stack switching
///   and the component model are refused at load.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    /// The engine's configuration, for the throwaway compilers of
    /// [`compile_module`](Self::compile_module).
    config: Config,
}

impl PolicyEngine {
    /// Builds the engine. Fails only if the host CPU or OS cannot run
    /// Cranelift-compiled code with this configuration.
    pub fn new() -> Result<Self, LoadError> {
        let mut config = Config::new();
        config
            .signals_based_traps(false)
            .memory_reservation(0)
            .memory_guard_size(0)
            .memory_reservation_for_growth(0)
            .memory_init_cow(false)
            .consume_fuel(true)
            .max_wasm_stack(MAX_WASM_STACK_BYTES)
            .wasm_backtrace_max_frames(None)
            .wasm_features(refused_features(), false);
        // SAFETY: these two flags only select how bounds checks are emitted;
        // without signal handlers Wasmtime requires them off (a mitigated check
        // turns an out-of-bounds access into a load from address zero, which
        // would need a SIGSEGV handler to become a trap).
        unsafe {
            config
                .cranelift_flag_set("enable_heap_access_spectre_mitigation", "false")
                .cranelift_flag_set("enable_table_access_spectre_mitigation", "false");
        }
        let engine = Engine::new(&config)
            .map_err(|e| LoadError::new(format!("the policy engine cannot start: {e:#}")))?;
        Ok(PolicyEngine { engine, config })
    }

    /// Checks, compiles, instantiates and configures a policy.
    ///
    /// Refused, each with its own message: an invalid name, a module larger
    /// than `max_module_bytes`, settings larger than [`MAX_INPUT_BYTES`], a
    /// function body above [`MAX_FUNCTION_BYTES`] or nested deeper than
    /// [`MAX_NESTING`], bytes that are not a valid module (for the enabled
    /// features), any import, missing or ill-typed exports, an ABI version
    /// other than [`abi::ABI_VERSION`], a failure while starting (bounded by
    /// `limits`), and settings the policy rejects (with the policy's own
    /// message).
    pub fn compile(
        &self,
        spec: PolicySpec,
        max_module_bytes: usize,
        limits: EvalLimits,
    ) -> Result<CompiledPolicy, LoadError> {
        check_module_size(spec.wasm.len(), max_module_bytes)?;
        check_code_shape(&spec.wasm)?;
        let module = self.checked_module(&spec)?;
        let guest = Guest::start(&module, &spec.settings, limits)?;
        Ok(CompiledPolicy::new(spec, Some(module), State::Live(guest)))
    }

    /// [`compile`](Self::compile) for a policy the dataset already holds
    /// (restored from an RDB, replayed from the AOF, replicated), whatever
    /// its size and the size of its functions: the primary accepted it,
    /// perhaps under other limits. One that cannot start is kept, broken,
    /// with its spec, and the reason is returned beside it: it stays listed,
    /// saved and replicated, and fails its evaluations (closed under
    /// `policy-failure deny`) until it is fixed. If it compiled (it was a lowered fuel or
    /// memory limit, say), its start is retried like any broken instance's;
    /// if it did not, it stays broken until replaced or unloaded.
    pub fn compile_kept(
        &self,
        spec: PolicySpec,
        limits: EvalLimits,
    ) -> (CompiledPolicy, Option<LoadError>) {
        let broken = |e: &LoadError| State::Broken(e.message().to_string(), Instant::now());
        let module = match self.checked_module(&spec) {
            Ok(module) => module,
            Err(e) => return (CompiledPolicy::new(spec, None, broken(&e)), Some(e)),
        };
        match Guest::start(&module, &spec.settings, limits) {
            Ok(guest) => (
                CompiledPolicy::new(spec, Some(module), State::Live(guest)),
                None,
            ),
            Err(e) => (CompiledPolicy::new(spec, Some(module), broken(&e)), Some(e)),
        }
    }

    /// Checks `spec`'s name and settings size, compiles its module, and
    /// checks the module's imports and exports.
    fn checked_module(&self, spec: &PolicySpec) -> Result<Module, LoadError> {
        PolicySpec::check_name(&spec.name)?;
        if spec.settings.len() > MAX_INPUT_BYTES {
            return Err(LoadError::new(format!(
                "settings are {} bytes; the maximum is {MAX_INPUT_BYTES}",
                spec.settings.len()
            )));
        }
        let module = self.compile_module(&spec.wasm)?;
        check_imports(&module)?;
        check_exports(&module)?;
        Ok(module)
    }

    /// Compiles `wasm` with a throwaway engine of the same configuration and
    /// moves the code into this one. Cranelift keeps its scratch buffers,
    /// as large as the largest function it ever compiled, for the life of
    /// its engine: this way they go when the compile ends, refused or not.
    fn compile_module(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let internal =
            |e: wasmtime::Error| LoadError::new(format!("the policy engine failed: {e:#}"));
        let compiler = Engine::new(&self.config).map_err(internal)?;
        let code = Module::from_binary(&compiler, wasm)
            .map_err(|e| LoadError::new(format!("not a valid WebAssembly module: {e:#}")))?
            .serialize()
            .map_err(internal)?;
        drop(compiler);
        // SAFETY: `code` was serialized just now, in this process, by an
        // engine of the same configuration and version, and never left
        // memory: `Module::deserialize` asks exactly that of its input.
        unsafe { Module::deserialize(&self.engine, &code) }.map_err(internal)
    }
}

/// Refuses a function body above [`MAX_FUNCTION_BYTES`] or nested deeper
/// than [`MAX_NESTING`], before anything is compiled. Bytes that do not
/// parse are left to the compiler, which names the error.
fn check_code_shape(wasm: &[u8]) -> Result<(), LoadError> {
    use wasmtime::wasmparser::{Operator, Parser, Payload};
    let bodies = Parser::new(0)
        .parse_all(wasm)
        .map_while(Result::ok)
        .filter_map(|payload| match payload {
            Payload::CodeSectionEntry(body) => Some(body),
            _ => None,
        });
    for (index, body) in bodies.enumerate() {
        let size = body.range().len();
        if size > MAX_FUNCTION_BYTES {
            return Err(LoadError::new(format!(
                "function body {index} is {size} bytes; the maximum is {MAX_FUNCTION_BYTES}"
            )));
        }
        let Ok(mut ops) = body.get_operators_reader() else {
            return Ok(());
        };
        let mut depth = 0usize;
        while !ops.eof() {
            match ops.read() {
                Ok(Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. }) => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(LoadError::new(format!(
                            "function body {index} nests blocks more than {MAX_NESTING} deep"
                        )));
                    }
                }
                Ok(Operator::End) => depth = depth.saturating_sub(1),
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}

/// The Wasm proposals refused at load (see [`PolicyEngine`]).
fn refused_features() -> WasmFeatures {
    WasmFeatures::THREADS
        | WasmFeatures::SHARED_EVERYTHING_THREADS
        | WasmFeatures::MEMORY64
        | WasmFeatures::MULTI_MEMORY
        | WasmFeatures::SIMD
        | WasmFeatures::RELAXED_SIMD
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::EXCEPTIONS
        | WasmFeatures::LEGACY_EXCEPTIONS
        | WasmFeatures::GC
        | WasmFeatures::FUNCTION_REFERENCES
        | WasmFeatures::EXTENDED_CONST
        | WasmFeatures::CUSTOM_PAGE_SIZES
        | WasmFeatures::WIDE_ARITHMETIC
        | WasmFeatures::STACK_SWITCHING
        | WasmFeatures::MEMORY_CONTROL
        | WasmFeatures::COMPONENT_MODEL
}

fn check_imports(module: &Module) -> Result<(), LoadError> {
    let count = module.imports().len();
    if count == 0 {
        return Ok(());
    }
    let mut list = module
        .imports()
        .take(MAX_IMPORTS_SHOWN)
        .map(|i| format!("{}::{} ({})", i.module(), i.name(), kind(&i.ty())))
        .collect::<Vec<_>>()
        .join(", ");
    if count > MAX_IMPORTS_SHOWN {
        list.push_str(&format!(" and {} more", count - MAX_IMPORTS_SHOWN));
    }
    Err(LoadError::new(format!(
        "policies may not import anything; this module imports {list}"
    )))
}

fn kind(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "function",
        ExternType::Global(_) => "global",
        ExternType::Table(_) => "table",
        ExternType::Memory(_) => "memory",
        ExternType::Tag(_) => "tag",
    }
}

/// A Wasm number type of the ABI.
#[derive(Clone, Copy)]
enum Num {
    I32,
    I64,
}

impl Num {
    fn matches(self, ty: &ValType) -> bool {
        match self {
            Num::I32 => ty.is_i32(),
            Num::I64 => ty.is_i64(),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Num::I32 => "i32",
            Num::I64 => "i64",
        }
    }
}

/// The signature of an exported ABI function.
struct Signature {
    params: &'static [Num],
    result: Num,
}

impl Signature {
    fn matches(&self, ty: &FuncType) -> bool {
        let (params, results) = (ty.params(), ty.results());
        params.len() == self.params.len()
            && params.zip(self.params).all(|(t, n)| n.matches(&t))
            && results.len() == 1
            && ty.results().all(|t| self.result.matches(&t))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<&str> = self.params.iter().map(|n| n.as_str()).collect();
        write!(f, "({}) -> {}", params.join(", "), self.result.as_str())
    }
}

/// The functions of the ABI, with their signatures.
const FUNCTIONS: [(&str, Signature); 4] = [
    (
        exports::ABI_VERSION,
        Signature {
            params: &[],
            result: Num::I32,
        },
    ),
    (
        exports::BUFFER,
        Signature {
            params: &[Num::I32],
            result: Num::I32,
        },
    ),
    (
        exports::CONFIGURE,
        Signature {
            params: &[Num::I32],
            result: Num::I64,
        },
    ),
    (
        exports::EVALUATE,
        Signature {
            params: &[Num::I32],
            result: Num::I64,
        },
    ),
];

/// Describes a function type like the ABI documentation does: `(i32) -> i64`.
fn describe(ty: &FuncType) -> String {
    let list = |types: &mut dyn Iterator<Item = ValType>| {
        types.map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "({}) -> ({})",
        list(&mut ty.params()),
        list(&mut ty.results())
    )
}

fn check_exports(module: &Module) -> Result<(), LoadError> {
    match module.get_export(exports::MEMORY) {
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(LoadError::new(format!(
                "export `{}` is a {}; expected a linear memory",
                exports::MEMORY,
                kind(&other)
            )));
        }
        None => {
            return Err(LoadError::new(format!(
                "missing export `{}` (a linear memory)",
                exports::MEMORY
            )));
        }
    }
    for (name, signature) in &FUNCTIONS {
        match module.get_export(name) {
            Some(ExternType::Func(ty)) if signature.matches(&ty) => {}
            Some(ExternType::Func(ty)) => {
                return Err(LoadError::new(format!(
                    "export `{name}` has type {}; expected {signature}",
                    describe(&ty)
                )));
            }
            Some(other) => {
                return Err(LoadError::new(format!(
                    "export `{name}` is a {}; expected a function {signature}",
                    kind(&other)
                )));
            }
            None => {
                return Err(LoadError::new(format!(
                    "missing export `{name}` (a function {signature})"
                )));
            }
        }
    }
    Ok(())
}

/// A checked, compiled and configured policy, ready to be installed in a
/// [`Registry`](super::Registry). It owns its live instance. `Send`, so it can
/// be compiled on another thread.
pub struct CompiledPolicy {
    spec: PolicySpec,
    sha256: [u8; 32],
    /// `None` for a policy kept from the dataset that does not compile
    /// ([`PolicyEngine::compile_kept`]).
    module: Option<Module>,
    instance: State,
}

/// The instance of a policy: live, or broken by a failed (re)start.
enum State {
    Live(Guest),
    /// Why the start failed, and when it was last tried.
    Broken(String, Instant),
}

/// How often a broken policy's rebuild is tried again (the cause may have
/// passed: a configuration that was since raised, a transient allocation
/// failure). Between tries every evaluation fails at once.
const REBUILD_RETRY: Duration = Duration::from_secs(1);

impl CompiledPolicy {
    fn new(spec: PolicySpec, module: Option<Module>, instance: State) -> Self {
        CompiledPolicy {
            sha256: Sha256::digest(&spec.wasm).into(),
            spec,
            module,
            instance,
        }
    }

    /// What the policy was loaded from.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Does the policy read `caller.user`, as it declared when it started
    /// (`lockwarden_request_fields`)? Otherwise the host may leave it empty
    /// and skip the lookup. A broken policy may start at its next
    /// evaluation: it is assumed to.
    pub fn reads_caller_user(&self) -> bool {
        match &self.instance {
            State::Live(guest) => guest.fields & abi::fields::CALLER_USER != 0,
            State::Broken(..) => true,
        }
    }

    /// The SHA-256 of the module's bytes, in lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Why the instance is unusable, if its start or a rebuild after a
    /// failure failed.
    pub fn broken(&self) -> Option<&str> {
        match &self.instance {
            State::Live(_) => None,
            State::Broken(why, _) => Some(why),
        }
    }

    /// Evaluates one encoded [`abi::Request`]. After any failure the instance
    /// is rebuilt (fresh store, instantiation and configuration under
    /// `limits`), and so is an instance whose memory is above a memory cap
    /// lowered since it grew. If the rebuild fails, the policy is broken:
    /// evaluations fail with [`EvalFailure::Unavailable`], and the rebuild is
    /// tried again at most every [`REBUILD_RETRY`] (never for a module that
    /// did not compile).
    pub(crate) fn evaluate(
        &mut self,
        request: &[u8],
        limits: EvalLimits,
    ) -> Result<Decision, EvalFailure> {
        let stale = match &self.instance {
            State::Live(guest) => guest.memory_bytes() as u64 > limits.memory_bytes,
            State::Broken(_, tried) => self.module.is_some() && tried.elapsed() >= REBUILD_RETRY,
        };
        if stale {
            self.rebuild(limits);
        }
        let guest = match &mut self.instance {
            State::Live(guest) => guest,
            State::Broken(why, _) => return Err(EvalFailure::Unavailable(why.clone())),
        };
        let decision = guest.evaluate(request, limits);
        if decision.is_err() {
            self.rebuild(limits);
        }
        decision
    }

    /// Evaluates one encoded request on an instance of its own, started
    /// under `limits` and dropped after: `LOCK.POLICY EVAL`, which must leave
    /// the live instance as it is whatever the request does to the one it
    /// runs on (a failure would rebuild it, and under lowered limits break
    /// it).
    pub(crate) fn dry_run(
        &self,
        request: &[u8],
        limits: EvalLimits,
    ) -> Result<Decision, EvalFailure> {
        // Broken, the policy fails real commands: so does the dry run.
        let (Some(module), None) = (&self.module, self.broken()) else {
            return Err(EvalFailure::Unavailable(
                self.broken().unwrap_or_default().to_owned(),
            ));
        };
        let mut guest = Guest::start(module, &self.spec.settings, limits).map_err(|e| {
            EvalFailure::Runtime(format!(
                "the policy does not start under the current limits: {}",
                e.message()
            ))
        })?;
        guest.evaluate(request, limits)
    }

    /// Replaces the instance with a fresh one (or records why that failed).
    fn rebuild(&mut self, limits: EvalLimits) {
        let Some(module) = &self.module else {
            return;
        };
        // Free the old instance before building its successor.
        self.instance = State::Broken(String::new(), Instant::now());
        self.instance = match Guest::start(module, &self.spec.settings, limits) {
            Ok(guest) => State::Live(guest),
            Err(e) => State::Broken(format!("rebuild failed: {}", e.message()), Instant::now()),
        };
    }
}

/// Refuses a module of `len` bytes above `max_module_bytes` (checked by
/// [`PolicyEngine::compile`]; callers may check first, before copying it).
pub fn check_module_size(len: usize, max_module_bytes: usize) -> Result<(), LoadError> {
    if len > max_module_bytes {
        return Err(LoadError::new(format!(
            "module is {len} bytes; the maximum is {max_module_bytes}"
        )));
    }
    Ok(())
}

/// Encodes `request` into `buf` for [`CompiledPolicy::evaluate`], refusing
/// requests above [`MAX_INPUT_BYTES`] (a request whose byte strings alone are
/// too large is refused without being encoded).
pub(crate) fn encode_request(
    request: &abi::Request<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), EvalFailure> {
    let too_large = |bytes: usize| {
        EvalFailure::Request(format!(
            "{bytes} bytes exceed the policy input limit of {MAX_INPUT_BYTES} bytes"
        ))
    };
    let strings = request.strings_len();
    if strings > MAX_INPUT_BYTES {
        return Err(too_large(strings));
    }
    request.encode_into(buf);
    if buf.len() > MAX_INPUT_BYTES {
        return Err(too_large(buf.len()));
    }
    Ok(())
}

/// The store's data: the resource limiter, armed before every call.
struct Host {
    /// Largest linear memory allowed, bytes.
    memory_limit: usize,
    /// Whether a memory growth was refused since the limiter was armed.
    memory_refused: bool,
    /// Table elements granted so far, over all tables.
    table_elements: usize,
}

impl ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Arms the limits for the next call: a fresh fuel budget and memory cap.
fn arm(store: &mut Store<Host>, limits: EvalLimits) -> Result<(), EvalFailure> {
    let host = store.data_mut();
    host.memory_limit = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    host.memory_refused = false;
    store
        .set_fuel(limits.fuel)
        .map_err(|e| failure(store, e, limits))
}

/// Classifies the error of a failed call.
fn failure(store: &Store<Host>, error: wasmtime::Error, limits: EvalLimits) -> EvalFailure {
    // A refused growth is the cause of what follows: the guest's own abort
    // on the failed allocation, or a loop that keeps asking until the fuel
    // runs out.
    if store.data().memory_refused {
        return EvalFailure::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => EvalFailure::FuelExhausted { fuel: limits.fuel },
        Some(trap) => {
            let text = trap.to_string();
            EvalFailure::Trap(text.strip_prefix("wasm trap: ").unwrap_or(&text).to_owned())
        }
        None => EvalFailure::Runtime(one_line(&format!("{error:#}"), MAX_GUEST_TEXT_CHARS)),
    }
}

/// The store, memory and input buffer of an instance: how inputs go in and
/// outputs come out.
struct Channel {
    store: Store<Host>,
    memory: Memory,
    buffer: TypedFunc<i32, i32>,
    /// The last buffer `lockwarden_buffer` gave: guest pointer and capacity.
    /// The ABI keeps it valid until the next call of `lockwarden_buffer`.
    input: Option<(u32, usize)>,
}

impl Channel {
    /// Arms the limits, copies `input` into the guest's buffer and calls
    /// `func` with its length. Returns where the output is.
    fn call(
        &mut self,
        func: &TypedFunc<i32, i64>,
        input: &[u8],
        limits: EvalLimits,
    ) -> Result<Output, EvalFailure> {
        arm(&mut self.store, limits)?;
        // Inputs are bounded by MAX_INPUT_BYTES, far below i32::MAX.
        let len = i32::try_from(input.len()).map_err(|_| {
            EvalFailure::Request(format!("{} bytes do not fit the ABI", input.len()))
        })?;
        let ptr = match self.input {
            Some((ptr, capacity)) if capacity >= input.len() => ptr,
            _ => {
                let ptr = self
                    .buffer
                    .call(&mut self.store, len)
                    .map_err(|e| failure(&self.store, e, limits))? as u32;
                self.input = Some((ptr, input.len()));
                ptr
            }
        };
        let Some(dest) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(span(ptr, input.len()))
        else {
            return Err(EvalFailure::BadBuffer(format!(
                "{}({}) gave {ptr:#x}, outside the {}-byte memory",
                exports::BUFFER,
                input.len(),
                self.memory.data_size(&self.store)
            )));
        };
        dest.copy_from_slice(input);
        let raw = func
            .call(&mut self.store, len)
            .map_err(|e| failure(&self.store, e, limits))?;
        Ok(Output::unpack(raw))
    }

    /// The output bytes, or a description of where they wrongly are.
    fn output(&self, out: Output) -> Result<&[u8], String> {
        let memory = self.memory.data(&self.store);
        memory.get(span(out.ptr, out.len as usize)).ok_or_else(|| {
            format!(
                "output at {:#x} ({} bytes) is outside the {}-byte memory",
                out.ptr,
                out.len,
                memory.len()
            )
        })
    }
}

/// The byte range `ptr .. ptr + len` of guest memory (out of bounds of any
/// memory if the sum overflows).
fn span(ptr: u32, len: usize) -> std::ops::Range<usize> {
    let start = ptr as usize;
    start..start.saturating_add(len)
}

/// A live, configured instance of a policy.
struct Guest {
    channel: Channel,
    evaluate: TypedFunc<i32, i64>,
    /// The optional request fields the policy reads (`abi::fields`).
    fields: u32,
}

impl Guest {
    /// The current size of the instance's linear memory, bytes.
    fn memory_bytes(&self) -> usize {
        self.channel.memory.data_size(&self.channel.store)
    }

    /// Instantiates `module`, checks its ABI version and configures it with
    /// `settings`, each step under `limits`.
    fn start(module: &Module, settings: &[u8], limits: EvalLimits) -> Result<Guest, LoadError> {
        let mut store = Store::new(
            module.engine(),
            Host {
                memory_limit: 0,
                memory_refused: false,
                table_elements: 0,
            },
        );
        store.limiter(|host| host as &mut dyn ResourceLimiter);
        let phase =
            |what: &str, failure: EvalFailure| LoadError::new(format!("{what} failed: {failure}"));
        arm(&mut store, limits).map_err(|f| phase("instantiation", f))?;
        let instance = Instance::new(&mut store, module, &[])
            .map_err(|e| phase("instantiation", failure(&store, e, limits)))?;
        let missing = |name: &str| LoadError::new(format!("export `{name}` is unusable"));
        let memory = instance
            .get_memory(&mut store, exports::MEMORY)
            .ok_or_else(|| missing(exports::MEMORY))?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, exports::ABI_VERSION)
            .map_err(|_| missing(exports::ABI_VERSION))?;
        let buffer = instance
            .get_typed_func::<i32, i32>(&mut store, exports::BUFFER)
            .map_err(|_| missing(exports::BUFFER))?;
        let configure = instance
            .get_typed_func::<i32, i64>(&mut store, exports::CONFIGURE)
            .map_err(|_| missing(exports::CONFIGURE))?;
        let evaluate = instance
            .get_typed_func::<i32, i64>(&mut store, exports::EVALUATE)
            .map_err(|_| missing(exports::EVALUATE))?;

        arm(&mut store, limits).map_err(|f| phase(exports::ABI_VERSION, f))?;
        let speaks = version
            .call(&mut store, ())
            .map_err(|e| phase(exports::ABI_VERSION, failure(&store, e, limits)))?;
        if u32::try_from(speaks) != Ok(abi::ABI_VERSION) {
            return Err(LoadError::new(format!(
                "policy speaks ABI version {speaks}; this server supports {}",
                abi::ABI_VERSION
            )));
        }
        // Optional: without it, the policy reads every field.
        let fields = match instance.get_export(&mut store, exports::REQUEST_FIELDS) {
            None => u32::MAX,
            Some(_) => {
                let declared = instance
                    .get_typed_func::<(), i32>(&mut store, exports::REQUEST_FIELDS)
                    .map_err(|_| {
                        LoadError::new(format!(
                            "export `{}` must be a function () -> i32",
                            exports::REQUEST_FIELDS
                        ))
                    })?;
                arm(&mut store, limits).map_err(|f| phase(exports::REQUEST_FIELDS, f))?;
                declared
                    .call(&mut store, ())
                    .map_err(|e| phase(exports::REQUEST_FIELDS, failure(&store, e, limits)))?
                    as u32
            }
        };

        let mut channel = Channel {
            store,
            memory,
            buffer,
            input: None,
        };
        let out = channel
            .call(&configure, settings, limits)
            .map_err(|f| phase(exports::CONFIGURE, f))?;
        let answer = channel
            .output(out)
            .and_then(|bytes| abi::decode::<Configured>(bytes).map_err(|e| e.to_string()))
            .map_err(|what| {
                LoadError::new(format!(
                    "malformed answer from {}: {what}",
                    exports::CONFIGURE
                ))
            })?;
        match answer {
            Configured::Ok => Ok(Guest {
                channel,
                evaluate,
                fields,
            }),
            Configured::Rejected(message) => Err(LoadError::new(format!(
                "policy rejected its settings: {}",
                one_line(&message, MAX_GUEST_TEXT_CHARS)
            ))),
        }
    }

    fn evaluate(&mut self, request: &[u8], limits: EvalLimits) -> Result<Decision, EvalFailure> {
        let out = self.channel.call(&self.evaluate, request, limits)?;
        let bytes = self
            .channel
            .output(out)
            .map_err(EvalFailure::MalformedDecision)?;
        abi::decode(bytes).map_err(|e| EvalFailure::MalformedDecision(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_headroom_counts_the_running_compiles() {
        const MIB: u64 = 1 << 20;
        // No maxmemory: no limit.
        assert_eq!(check_compile_headroom(0, 10_000 * MIB, 5), Ok(()));
        // Exactly enough, then one byte short.
        assert_eq!(check_compile_headroom(100 * MIB, 36 * MIB, 0), Ok(()));
        assert_eq!(
            check_compile_headroom(100 * MIB, 36 * MIB + 1, 0),
            Err(crate::LockError::CompileMemory {
                needed: 64 * MIB,
                left: 64 * MIB - 1
            })
        );
        // Room for two, not three.
        assert_eq!(check_compile_headroom(200 * MIB, 72 * MIB, 1), Ok(()));
        assert!(check_compile_headroom(200 * MIB, 72 * MIB, 2).is_err());
        // Already over maxmemory.
        assert_eq!(
            check_compile_headroom(100 * MIB, 150 * MIB, 0),
            Err(crate::LockError::CompileMemory {
                needed: 64 * MIB,
                left: 0
            })
        );
    }
}
