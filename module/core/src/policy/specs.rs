//! The binary encoding of a set of [`PolicySpec`]s, for persistence (RDB aux
//! data) and replication.
//!
//! Version 1, all integers little-endian:
//!
//! ```text
//! "LWPS"  u8 version = 1  u64 count
//! count × { bytes name (UTF-8)  bytes keys  u8 mode (0 enforce, 1 audit)  bytes settings  bytes wasm }
//! where bytes = u64 length, then that many bytes
//! ```

use super::{Mode, PolicySpec};

const MAGIC: &[u8; 4] = b"LWPS";
const VERSION: u8 = 1;
/// The smallest encoding of one spec: four empty byte strings and the mode.
const MIN_SPEC_BYTES: usize = 4 * 8 + 1;

/// Encodes policy specs (in load order) for [`decode_specs`].
pub fn encode_specs<'a>(specs: impl IntoIterator<Item = &'a PolicySpec>) -> Vec<u8> {
    let specs: Vec<&PolicySpec> = specs.into_iter().collect();
    let mut out = Vec::with_capacity(
        MAGIC.len()
            + 9
            + specs
                .iter()
                .map(|s| {
                    MIN_SPEC_BYTES + s.name.len() + s.keys.len() + s.settings.len() + s.wasm.len()
                })
                .sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(specs.len() as u64).to_le_bytes());
    for spec in specs {
        put_bytes(&mut out, spec.name.as_bytes());
        put_bytes(&mut out, &spec.keys);
        out.push(match spec.mode {
            Mode::Enforce => 0,
            Mode::Audit => 1,
        });
        put_bytes(&mut out, &spec.settings);
        put_bytes(&mut out, &spec.wasm);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes what [`encode_specs`] produced. Anything else (truncated, trailing
/// bytes, unknown version or mode, a name that is not UTF-8) is an error with
/// a message; it never panics. The specs are not compiled or checked here.
pub fn decode_specs(bytes: &[u8]) -> Result<Vec<PolicySpec>, String> {
    let mut r = Reader { rest: bytes };
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a lockwarden policy set".into());
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!(
            "policy set encoding version {version} is not supported (this build reads version {VERSION})"
        ));
    }
    let count = r.u64()?;
    if count > (r.rest.len() / MIN_SPEC_BYTES) as u64 {
        return Err(format!(
            "policy set claims {count} policies but is too short for them"
        ));
    }
    let mut specs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| "policy name is not UTF-8".to_string())?;
        let keys = r.bytes()?.to_vec();
        let mode = match r.u8()? {
            0 => Mode::Enforce,
            1 => Mode::Audit,
            other => return Err(format!("unknown policy mode {other}")),
        };
        let settings = r.bytes()?.to_vec();
        let wasm = r.bytes()?.to_vec();
        specs.push(PolicySpec {
            name,
            keys,
            mode,
            settings,
            wasm,
        });
    }
    if !r.rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the policy set",
            r.rest.len()
        ));
    }
    Ok(specs)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("policy set is truncated".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut le = [0u8; 8];
        le.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(le))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }
}
