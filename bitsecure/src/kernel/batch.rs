//! Batched map reads and deletes (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6+),
//! and the read-and-delete of one entry that folding an idle flow needs
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps, Linux 5.14+).
//!
//! aya 0.14 has no batch API; iterating a 10,000-entry map key by key costs two syscalls per
//! entry, a batch read costs one per few thousand. Keys and values are `aya::Pod` types, read
//! from the kernel's byte layout.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// `ENOTSUPP` (kernel-internal, leaks to user space): what Linux 5.10–5.13 answer to
/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps.
const ENOTSUPP: i32 = 524;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries requested per syscall.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix for this command; the kernel
    // reads/writes only the buffers it points to, which the callers keep alive and sized.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads every entry of a hash map. Per-CPU maps return `cpus` values per key (`cpus` = 1 for
/// ordinary maps), each padded to 8 bytes as the kernel lays them out.
pub fn lookup_all<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    cpus: usize,
) -> io::Result<Vec<(K, Vec<V>)>> {
    let value_stride = size_of::<V>().next_multiple_of(8);
    let mut chunk = CHUNK;
    let mut entries = Vec::new();
    // The batch token is opaque (a bucket index for hash maps); 8 bytes covers every map type.
    let mut token = [0u8; 8];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * value_stride * cpus];
        let mut next_token = [0u8; 8];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            // ENOENT: this was the last batch (count may still be > 0).
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            // ENOSPC: one hash bucket holds more entries than the buffer; retry bigger.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                chunk *= 2;
                continue;
            }
            Err(error) => return Err(error),
        };
        for index in 0..attr.count as usize {
            let key = read_pod::<K>(&keys[index * size_of::<K>()..]);
            let base = index * value_stride * cpus;
            let per_cpu = (0..cpus)
                .map(|cpu| read_pod::<V>(&values[base + cpu * value_stride..]))
                .collect();
            entries.push((key, per_cpu));
        }
        if done {
            return Ok(entries);
        }
        token = next_token;
        first = false;
    }
}

/// Deletes `keys` from a map. Keys that are already gone are skipped, not an error.
pub fn delete_keys<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut remaining = keys;
    while !remaining.is_empty() {
        let mut attr = BatchAttr {
            keys: remaining.as_ptr() as u64,
            count: remaining.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => return Ok(()),
            // The batch stops at the first missing key; `count` says how many went before it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                remaining = &remaining[(attr.count as usize + 1).min(remaining.len())..];
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Removes `key` from a hash map and returns its value as it was when removed (per-CPU maps:
/// `cpus` values), so nothing added between a read and the delete is lost. `None` if the key
/// was not there. Before Linux 5.14 (no lookup-and-delete on hash maps) it reads, then
/// deletes: a packet counted in between is lost.
pub fn lookup_and_delete<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    key: &K,
    cpus: usize,
) -> io::Result<Option<Vec<V>>> {
    let value_stride = size_of::<V>().next_multiple_of(8);
    let mut values = vec![0u8; value_stride * cpus];
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        value: values.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    let mut result = bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr);
    if matches!(&result, Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)))
    {
        result = bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).and_then(|()| {
            let mut delete = ElemAttr { value: 0, ..attr };
            bpf(BPF_MAP_DELETE_ELEM, &mut delete)
        });
    }
    match result {
        Ok(()) => Ok(Some(
            (0..cpus)
                .map(|cpu| read_pod::<V>(&values[cpu * value_stride..]))
                .collect(),
        )),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

fn read_pod<T: Pod>(bytes: &[u8]) -> T {
    assert!(
        bytes.len() >= size_of::<T>(),
        "buffer shorter than the map's element"
    );
    // SAFETY: T is Pod (any bit pattern valid) and the slice holds at least size_of::<T>() bytes.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}
