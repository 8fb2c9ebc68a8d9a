//! Whether an executable is statically linked: a 64-bit little-endian ELF
//! file without a program interpreter (`PT_INTERP`). `palisade-cni` runs on
//! the host, whose C library may be older than the builder's or not glibc
//! at all; a binary that names no interpreter needs none.

use anyhow::{bail, Context, Result};

/// `p_type` of the program header naming the interpreter.
const PT_INTERP: u32 = 3;

fn read<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N]> {
    let end = at.checked_add(N).context("ELF offset overflows")?;
    let bytes = elf
        .get(at..end)
        .with_context(|| format!("ELF file truncated at byte {at}"))?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn u16_at(elf: &[u8], at: usize) -> Result<usize> {
    Ok(usize::from(u16::from_le_bytes(read(elf, at)?)))
}

fn u32_at(elf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read(elf, at)?))
}

fn u64_at(elf: &[u8], at: usize) -> Result<usize> {
    usize::try_from(u64::from_le_bytes(read(elf, at)?)).context("ELF offset too large")
}

/// The interpreter an ELF executable names (`/lib64/ld-linux-x86-64.so.2`
/// for a glibc binary), or `None` for a static one.
pub fn interpreter(elf: &[u8]) -> Result<Option<String>> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("not an ELF file");
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian.
    if elf.get(4..6) != Some([2u8, 1].as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = u64_at(elf, 0x20)?;
    let phentsize = u16_at(elf, 0x36)?;
    let phnum = u16_at(elf, 0x38)?;
    for i in 0..phnum {
        let header = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .context("ELF program header offset overflows")?;
        if u32_at(elf, header)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(elf, header + 8)?;
        let size = u64_at(elf, header + 32)?;
        let end = offset.checked_add(size).context("PT_INTERP overflows")?;
        let name = elf
            .get(offset..end)
            .context("PT_INTERP points past the end of the file")?;
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

/// Fails unless `elf` is a static executable, naming the interpreter it
/// needs otherwise.
pub fn require_static(elf: &[u8]) -> Result<()> {
    match interpreter(elf)? {
        None => Ok(()),
        Some(interp) => bail!(
            "dynamically linked (needs {interp}): it would fail on hosts with an older \
             or another C library; build it for the musl target"
        ),
    }
}
