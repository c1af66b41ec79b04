//! Key derivation: `prefix : job name : xxh3-128(canonical encoding of args)`, the hash seeded
//! per job with xxh3-64 of the prefix and job name.
//!
//! The job's args are never put into a store key verbatim (they may be user-controlled and of any
//! size); they are serialized with a private canonical encoding and hashed. That encoding is
//! defined in this file, byte for byte, because it is part of the on-store format: a change to it
//! silently changes every key, so it is pinned by golden tests.
//!
//! # Canonical encoding
//!
//! Every value starts with a one-byte tag, followed by its payload. All integers are big-endian.
//! `len` and `count` are `u64` big-endian; a `name` is a `len` followed by the UTF-8 bytes; a
//! variant is `index` (`u32` big-endian) followed by its `name`.
//!
//! | tag    | serde type     | payload                                            |
//! |--------|----------------|----------------------------------------------------|
//! | `0x01` | bool           | one byte, `0x00` or `0x01`                         |
//! | `0x02` | i8             | 1 byte, two's complement                           |
//! | `0x03` | i16            | 2 bytes                                            |
//! | `0x04` | i32            | 4 bytes                                            |
//! | `0x05` | i64            | 8 bytes (`isize` serializes as i64)                |
//! | `0x06` | i128           | 16 bytes                                           |
//! | `0x07` | u8             | 1 byte                                             |
//! | `0x08` | u16            | 2 bytes                                            |
//! | `0x09` | u32            | 4 bytes                                            |
//! | `0x0A` | u64            | 8 bytes (`usize` serializes as u64)                |
//! | `0x0B` | u128           | 16 bytes                                           |
//! | `0x0C` | f32            | IEEE 754 bits, 4 bytes; every NaN as `0x7FC0_0000` |
//! | `0x0D` | f64            | IEEE 754 bits, 8 bytes; every NaN as `0x7FF8_0000_0000_0000` |
//! | `0x0E` | char           | Unicode scalar value as u32, 4 bytes               |
//! | `0x0F` | str            | `len`, UTF-8 bytes                                 |
//! | `0x10` | bytes          | `len`, bytes                                       |
//! | `0x11` | none           | —                                                  |
//! | `0x12` | some           | value                                              |
//! | `0x13` | unit           | —                                                  |
//! | `0x14` | unit struct    | —                                                  |
//! | `0x15` | unit variant   | variant                                            |
//! | `0x16` | newtype struct | value                                              |
//! | `0x17` | newtype variant| variant, value                                     |
//! | `0x18` | seq            | `count`, elements                                  |
//! | `0x19` | tuple          | `count`, elements                                  |
//! | `0x1A` | tuple struct   | `count`, fields                                    |
//! | `0x1B` | tuple variant  | variant, `count`, fields                           |
//! | `0x1C` | map            | `count`, (key, value) pairs sorted by their bytes  |
//! | `0x1D` | struct         | `count`, (field `name`, value) in serialization order |
//! | `0x1E` | struct variant | variant, `count`, (field `name`, value)            |
//!
//! Consequences worth knowing:
//!
//! - Each integer width has its own tag, so changing an arg from `u32` to `u64` changes its keys.
//! - `-0.0` and `0.0` stay distinct (they are different bit patterns and may mean different
//!   things to a job), but all NaNs are one value, as no caller can tell NaN payloads apart.
//! - Field and variant names are encoded, and so is the variant index: renaming a field or a
//!   variant, or reordering variants, changes the key. Container names (the Rust name of a struct
//!   or enum) are *not* encoded, so renaming a type keeps its keys.
//! - Maps are order-independent: a `HashMap` gives the same bytes whatever its insertion order or
//!   hasher seed, and the same as a `BTreeMap` with the same contents.
//! - Counts are the number of items actually serialized, not the length hint a `Serialize` impl
//!   passes (that hint is optional and can be wrong, e.g. with `skip_serializing_if`).
//! - The encoder reports itself as not human-readable, so types such as `IpAddr` use their compact
//!   serde form.
//! - An encoding longer than [`MAX_ARGS_LEN`] is rejected with [`KeyError::ArgsTooLarge`] as soon
//!   as it crosses the limit, so oversized args never get buffered in full.
//!
//! # Key text
//!
//! A key's text is `{prefix}:{job}:{digest}` with the digest as exactly 32 lowercase hex digits.
//! Prefixes are limited to [`MAX_PREFIX_LEN`] bytes of `[A-Za-z0-9_.-]` (no `:`), job names to
//! [`MAX_JOB_NAME_LEN`] bytes of printable ASCII other than `{` and `}` (`:` is allowed, as in
//! `my_crate::user_tweets`). So the text parses back unambiguously (the prefix ends at the first
//! `:`, the digest is the last 32 characters), is at most 64 + 1 + 128 + 1 + 32 = 226 bytes and
//! contains no whitespace or control characters: safe as a memcached key (< 250 bytes) and free
//! of Redis Cluster hash tags, which the Redis store adds itself.

use std::cell::RefCell;
use std::fmt;

use serde::Serialize;
use serde::ser;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};

/// Longest accepted prefix, in bytes.
pub(crate) const MAX_PREFIX_LEN: usize = 64;

/// Longest accepted job name, in bytes.
pub(crate) const MAX_JOB_NAME_LEN: usize = 128;

/// Longest accepted canonical encoding of a job's args, in bytes (1 MiB).
pub(crate) const MAX_ARGS_LEN: usize = 1 << 20;

/// Capacity the per-thread scratch buffer may keep between calls; one huge arg must not pin
/// megabytes on every thread that ever saw it.
const MAX_RETAINED_CAPACITY: usize = 64 * 1024;

/// A store key: `prefix`, job name and the 128-bit digest of the job's canonically encoded args.
///
/// Its [`Display`](fmt::Display) form is the key text used by the stores:
/// `{prefix}:{job}:{digest}`, the digest written as exactly 32 lowercase hex digits. Keys built by
/// cacheback have a validated prefix and job name, which makes that text at most 226 bytes of
/// printable ASCII; [`Key::new`] itself does not validate.
///
/// # Example
///
/// ```
/// use cacheback::Key;
///
/// let key = Key::new("myapp", "my_crate::user_tweets", 0x0123_4567_89ab_cdef_0000_0000_0000_002a);
/// assert_eq!(key.prefix(), "myapp");
/// assert_eq!(key.job(), "my_crate::user_tweets");
/// assert_eq!(
///     key.to_string(),
///     "myapp:my_crate::user_tweets:0123456789abcdef000000000000002a",
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key<'a> {
    prefix: &'a str,
    job: &'a str,
    digest: u128,
}

impl<'a> Key<'a> {
    /// Assembles a key from its parts, without validating them.
    pub fn new(prefix: &'a str, job: &'a str, digest: u128) -> Self {
        Self {
            prefix,
            job,
            digest,
        }
    }

    /// The application prefix that isolates this application's keys from others in one store.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The job name.
    pub fn job(&self) -> &'a str {
        self.job
    }

    /// The xxh3-128 digest of the prefix, the job name and the canonically encoded args.
    pub fn digest(&self) -> u128 {
        self.digest
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{:032x}", self.prefix, self.job, self.digest)
    }
}

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// The args' `Serialize` impl reported an error.
    #[error("args could not be serialized: {0}")]
    Serialize(String),
    /// The canonical encoding of the args is longer than `limit` bytes.
    #[error("args are too large: their canonical encoding exceeds {limit} bytes")]
    ArgsTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The prefix is the empty string.
    #[error("prefix is empty")]
    EmptyPrefix,
    /// The prefix is longer than [`MAX_PREFIX_LEN`] bytes.
    #[error("prefix `{}` is {len} bytes long, more than the maximum of {max}", Shown(.prefix), max = MAX_PREFIX_LEN)]
    PrefixTooLong {
        /// The rejected prefix.
        prefix: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The prefix contains a character outside `[A-Za-z0-9_.-]`.
    #[error("prefix `{}` {reason}", Shown(.prefix))]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The job name is the empty string.
    #[error("job name is empty")]
    EmptyJobName,
    /// The job name is longer than [`MAX_JOB_NAME_LEN`] bytes.
    #[error("job name `{}` is {len} bytes long, more than the maximum of {max}", Shown(.name), max = MAX_JOB_NAME_LEN)]
    JobNameTooLong {
        /// The rejected job name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The job name contains whitespace, a control character, a non-ASCII character, `{` or `}`.
    #[error("job name `{}` {reason}", Shown(.name))]
    InvalidJobName {
        /// The rejected job name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ser::Error for KeyError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        KeyError::Serialize(msg.to_string())
    }
}

/// Displays a rejected name escaped (so control characters show as `\n`, `\u{0}`, …) and cut
/// short, so that an error message stays one readable line whatever the input was.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 80;
        for c in self.0.chars().take(MAX_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if self.0.chars().nth(MAX_CHARS).is_some() {
            f.write_str("...")?;
        }
        Ok(())
    }
}

const REASON_WHITESPACE: &str = "contains whitespace or a control character";
const REASON_NON_ASCII: &str = "contains a non-ASCII character";

/// Checks that `prefix` is 1 to [`MAX_PREFIX_LEN`] bytes of ASCII letters, digits, `_`, `.`, `-`.
///
/// `:` is excluded so that the prefix is exactly the part of a key before its first `:`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        return Err(KeyError::EmptyPrefix);
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(KeyError::PrefixTooLong {
            prefix: prefix.to_owned(),
            len: prefix.len(),
        });
    }
    let invalid = |reason| KeyError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    for c in prefix.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '.' | '-' => {}
            ':' => return Err(invalid("contains `:`, which separates the parts of a key")),
            c if c.is_whitespace() || c.is_control() => return Err(invalid(REASON_WHITESPACE)),
            c if !c.is_ascii() => return Err(invalid(REASON_NON_ASCII)),
            _ => {
                return Err(invalid(
                    "contains a character other than ASCII letters, digits, `_`, `.` and `-`",
                ));
            }
        }
    }
    Ok(())
}

/// Checks that `name` is 1 to [`MAX_JOB_NAME_LEN`] bytes of printable ASCII (`0x21..=0x7E`) other
/// than `{` and `}`.
///
/// Braces are excluded because Redis Cluster would read them as a hash tag and place the key on a
/// slot of the job's choosing; `:` is allowed so that names can look like Rust paths.
pub(crate) fn validate_job_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(KeyError::EmptyJobName);
    }
    if name.len() > MAX_JOB_NAME_LEN {
        return Err(KeyError::JobNameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let invalid = |reason| KeyError::InvalidJobName {
        name: name.to_owned(),
        reason,
    };
    for c in name.chars() {
        match c {
            '{' | '}' => {
                return Err(invalid(
                    "contains `{` or `}`, which Redis Cluster would read as a hash tag",
                ));
            }
            c if c.is_ascii_graphic() => {}
            c if c.is_whitespace() || c.is_control() => return Err(invalid(REASON_WHITESPACE)),
            _ => return Err(invalid(REASON_NON_ASCII)),
        }
    }
    Ok(())
}

thread_local! {
    /// Scratch buffer for [`digest`], so that computing a key on the read path does not allocate.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The 128-bit digest identifying `args` of job `job` under `prefix`: xxh3-128 of the canonical
/// encoding of `args`, seeded with [`job_seed`] of the prefix and job name.
///
/// The prefix and job name are not validated here; that is done once, when a job is registered.
pub(crate) fn digest<A: Serialize + ?Sized>(
    prefix: &str,
    job: &str,
    args: &A,
) -> Result<u128, KeyError> {
    digest_seeded(job_seed(prefix, job), args)
}

/// The seed of one job's digests under one prefix: xxh3-64 over the prefix and the job name
/// (each as `u64` big-endian length, then bytes). Computed once per registered job, so the read
/// path hashes only the args.
pub(crate) fn job_seed(prefix: &str, job: &str) -> u64 {
    let mut buf = Vec::with_capacity(16 + prefix.len() + job.len());
    put_len(&mut buf, prefix.len());
    buf.extend_from_slice(prefix.as_bytes());
    put_len(&mut buf, job.len());
    buf.extend_from_slice(job.as_bytes());
    xxh3_64(&buf)
}

/// [`digest`] with the job's seed already computed: the read path's form.
#[inline]
pub(crate) fn digest_seeded<A: Serialize + ?Sized>(seed: u64, args: &A) -> Result<u128, KeyError> {
    let in_scratch = SCRATCH.try_with(|scratch| {
        // Already borrowed means a `Serialize` impl is computing a digest from inside `digest`;
        // that nested call gets its own buffer instead of a panic.
        let mut buf = scratch.try_borrow_mut().ok()?;
        let result = digest_with(&mut buf, seed, args);
        // Don't keep a huge allocation around.
        if buf.capacity() > MAX_RETAINED_CAPACITY {
            buf.clear();
            buf.shrink_to(MAX_RETAINED_CAPACITY);
        }
        Some(result)
    });
    match in_scratch {
        Ok(Some(result)) => result,
        // Re-entered, or called while this thread's locals are being destroyed.
        Ok(None) | Err(_) => digest_with(&mut Vec::new(), seed, args),
    }
}

fn digest_with<A: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    seed: u64,
    args: &A,
) -> Result<u128, KeyError> {
    buf.clear();
    canonical_encode(args, buf)?;
    Ok(xxh3_128_with_seed(buf, seed))
}

/// Appends the canonical encoding of `args` (see the [module docs](self)) to `out`.
///
/// Fails with [`KeyError::ArgsTooLarge`] once the encoding exceeds [`MAX_ARGS_LEN`] bytes (`out`
/// then holds a truncated encoding), and with [`KeyError::Serialize`] if `args`' `Serialize` impl
/// fails.
pub(crate) fn canonical_encode<A: Serialize + ?Sized>(
    args: &A,
    out: &mut Vec<u8>,
) -> Result<(), KeyError> {
    args.serialize(&mut Encoder {
        out,
        remaining: MAX_ARGS_LEN,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

const TAG_BOOL: u8 = 0x01;
const TAG_I8: u8 = 0x02;
const TAG_I16: u8 = 0x03;
const TAG_I32: u8 = 0x04;
const TAG_I64: u8 = 0x05;
const TAG_I128: u8 = 0x06;
const TAG_U8: u8 = 0x07;
const TAG_U16: u8 = 0x08;
const TAG_U32: u8 = 0x09;
const TAG_U64: u8 = 0x0A;
const TAG_U128: u8 = 0x0B;
const TAG_F32: u8 = 0x0C;
const TAG_F64: u8 = 0x0D;
const TAG_CHAR: u8 = 0x0E;
const TAG_STR: u8 = 0x0F;
const TAG_BYTES: u8 = 0x10;
const TAG_NONE: u8 = 0x11;
const TAG_SOME: u8 = 0x12;
const TAG_UNIT: u8 = 0x13;
const TAG_UNIT_STRUCT: u8 = 0x14;
const TAG_UNIT_VARIANT: u8 = 0x15;
const TAG_NEWTYPE_STRUCT: u8 = 0x16;
const TAG_NEWTYPE_VARIANT: u8 = 0x17;
const TAG_SEQ: u8 = 0x18;
const TAG_TUPLE: u8 = 0x19;
const TAG_TUPLE_STRUCT: u8 = 0x1A;
const TAG_TUPLE_VARIANT: u8 = 0x1B;
const TAG_MAP: u8 = 0x1C;
const TAG_STRUCT: u8 = 0x1D;
const TAG_STRUCT_VARIANT: u8 = 0x1E;

const CANONICAL_NAN_F32: u32 = 0x7FC0_0000;
const CANONICAL_NAN_F64: u64 = 0x7FF8_0000_0000_0000;

/// The canonical encoder; appends to `out` and counts down `remaining` bytes of budget.
///
/// Only bytes written for the first time count against the budget: moving already-encoded map
/// pairs into sorted order does not, so the budget is exactly the final encoding's length.
struct Encoder<'o> {
    out: &'o mut Vec<u8>,
    remaining: usize,
}

impl<'o> Encoder<'o> {
    fn spend(&mut self, n: usize) -> Result<(), KeyError> {
        self.remaining = self
            .remaining
            .checked_sub(n)
            .ok_or(KeyError::ArgsTooLarge {
                limit: MAX_ARGS_LEN,
            })?;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), KeyError> {
        self.spend(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn tagged(&mut self, tag: u8, payload: &[u8]) -> Result<(), KeyError> {
        // Spend for the whole value up front, so an oversized string fails before it is copied.
        self.spend(1 + payload.len())?;
        self.out.push(tag);
        self.out.extend_from_slice(payload);
        Ok(())
    }

    /// A length-prefixed byte string, without a tag: used for names, whose type is implied by
    /// their position, and (after a tag) for `str` and `bytes`.
    fn name(&mut self, bytes: &[u8]) -> Result<(), KeyError> {
        self.spend(8 + bytes.len())?;
        put_len(self.out, bytes.len());
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn variant(&mut self, tag: u8, index: u32, name: &str) -> Result<(), KeyError> {
        self.tagged(tag, &index.to_be_bytes())?;
        self.name(name.as_bytes())
    }

    /// Writes a zero count and returns its position, to be patched with the real count once the
    /// items have been written (a length hint may be absent or wrong).
    fn count_placeholder(&mut self) -> Result<usize, KeyError> {
        let pos = self.out.len();
        self.put(&[0; 8])?;
        Ok(pos)
    }

    fn compound<'e>(&'e mut self, tag: u8) -> Result<Compound<'e, 'o>, KeyError> {
        self.put(&[tag])?;
        self.compound_body()
    }

    fn compound_body<'e>(&'e mut self) -> Result<Compound<'e, 'o>, KeyError> {
        let count_pos = self.count_placeholder()?;
        Ok(Compound {
            enc: self,
            count_pos,
            count: 0,
        })
    }
}

/// Sequences, tuples and structs of every kind: items are written in place, then counted.
struct Compound<'e, 'o> {
    enc: &'e mut Encoder<'o>,
    count_pos: usize,
    count: u64,
}

impl Compound<'_, '_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.count += 1;
        value.serialize(&mut *self.enc)
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.enc.name(name.as_bytes())?;
        self.item(value)
    }

    fn finish(self) -> Result<(), KeyError> {
        self.enc.out[self.count_pos..self.count_pos + 8].copy_from_slice(&self.count.to_be_bytes());
        Ok(())
    }
}

/// A map: pairs are written in place as they come, then rearranged into byte order at the end, so
/// that the encoding does not depend on iteration order.
struct MapCompound<'e, 'o> {
    enc: &'e mut Encoder<'o>,
    count_pos: usize,
    /// `start..end` of each encoded pair in `enc.out`; pairs are contiguous.
    pairs: Vec<(usize, usize)>,
    pair_start: usize,
}

impl<'a, 'o> ser::Serializer for &'a mut Encoder<'o> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Compound<'a, 'o>;
    type SerializeTuple = Compound<'a, 'o>;
    type SerializeTupleStruct = Compound<'a, 'o>;
    type SerializeTupleVariant = Compound<'a, 'o>;
    type SerializeMap = MapCompound<'a, 'o>;
    type SerializeStruct = Compound<'a, 'o>;
    type SerializeStructVariant = Compound<'a, 'o>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), KeyError> {
        self.tagged(TAG_BOOL, &[u8::from(v)])
    }

    fn serialize_i8(self, v: i8) -> Result<(), KeyError> {
        self.tagged(TAG_I8, &v.to_be_bytes())
    }

    fn serialize_i16(self, v: i16) -> Result<(), KeyError> {
        self.tagged(TAG_I16, &v.to_be_bytes())
    }

    fn serialize_i32(self, v: i32) -> Result<(), KeyError> {
        self.tagged(TAG_I32, &v.to_be_bytes())
    }

    fn serialize_i64(self, v: i64) -> Result<(), KeyError> {
        self.tagged(TAG_I64, &v.to_be_bytes())
    }

    fn serialize_i128(self, v: i128) -> Result<(), KeyError> {
        self.tagged(TAG_I128, &v.to_be_bytes())
    }

    fn serialize_u8(self, v: u8) -> Result<(), KeyError> {
        self.tagged(TAG_U8, &v.to_be_bytes())
    }

    fn serialize_u16(self, v: u16) -> Result<(), KeyError> {
        self.tagged(TAG_U16, &v.to_be_bytes())
    }

    fn serialize_u32(self, v: u32) -> Result<(), KeyError> {
        self.tagged(TAG_U32, &v.to_be_bytes())
    }

    fn serialize_u64(self, v: u64) -> Result<(), KeyError> {
        self.tagged(TAG_U64, &v.to_be_bytes())
    }

    fn serialize_u128(self, v: u128) -> Result<(), KeyError> {
        self.tagged(TAG_U128, &v.to_be_bytes())
    }

    fn serialize_f32(self, v: f32) -> Result<(), KeyError> {
        let bits = if v.is_nan() {
            CANONICAL_NAN_F32
        } else {
            v.to_bits()
        };
        self.tagged(TAG_F32, &bits.to_be_bytes())
    }

    fn serialize_f64(self, v: f64) -> Result<(), KeyError> {
        let bits = if v.is_nan() {
            CANONICAL_NAN_F64
        } else {
            v.to_bits()
        };
        self.tagged(TAG_F64, &bits.to_be_bytes())
    }

    fn serialize_char(self, v: char) -> Result<(), KeyError> {
        self.tagged(TAG_CHAR, &u32::from(v).to_be_bytes())
    }

    fn serialize_str(self, v: &str) -> Result<(), KeyError> {
        self.put(&[TAG_STR])?;
        self.name(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), KeyError> {
        self.put(&[TAG_BYTES])?;
        self.name(v)
    }

    fn serialize_none(self) -> Result<(), KeyError> {
        self.put(&[TAG_NONE])
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), KeyError> {
        self.put(&[TAG_SOME])?;
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), KeyError> {
        self.put(&[TAG_UNIT])
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), KeyError> {
        self.put(&[TAG_UNIT_STRUCT])
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
    ) -> Result<(), KeyError> {
        self.variant(TAG_UNIT_VARIANT, variant_index, variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.put(&[TAG_NEWTYPE_STRUCT])?;
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.variant(TAG_NEWTYPE_VARIANT, variant_index, variant)?;
        value.serialize(self)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, KeyError> {
        self.compound(TAG_SEQ)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, KeyError> {
        self.compound(TAG_TUPLE)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, KeyError> {
        self.compound(TAG_TUPLE_STRUCT)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, KeyError> {
        self.variant(TAG_TUPLE_VARIANT, variant_index, variant)?;
        self.compound_body()
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, KeyError> {
        self.put(&[TAG_MAP])?;
        let count_pos = self.count_placeholder()?;
        let pair_start = self.out.len();
        Ok(MapCompound {
            enc: self,
            count_pos,
            pairs: Vec::new(),
            pair_start,
        })
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, KeyError> {
        self.compound(TAG_STRUCT)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, KeyError> {
        self.variant(TAG_STRUCT_VARIANT, variant_index, variant)?;
        self.compound_body()
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.item(value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.item(value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.item(value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.item(value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), KeyError> {
        self.finish()
    }
}

impl ser::SerializeMap for MapCompound<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), KeyError> {
        key.serialize(&mut *self.enc)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        value.serialize(&mut *self.enc)?;
        // A pair ends after its value, and the next one starts there.
        let end = self.enc.out.len();
        self.pairs.push((self.pair_start, end));
        self.pair_start = end;
        Ok(())
    }

    fn end(self) -> Result<(), KeyError> {
        let out = &mut *self.enc.out;
        let end = out.len();
        if self.pair_start != end {
            return Err(ser::Error::custom("map key serialized without a value"));
        }
        out[self.count_pos..self.count_pos + 8]
            .copy_from_slice(&(self.pairs.len() as u64).to_be_bytes());
        if self.pairs.len() > 1 {
            let mut pairs = self.pairs;
            // Keys are self-delimiting, so ordering whole pairs orders by key, then by value.
            pairs.sort_unstable_by(|a, b| out[a.0..a.1].cmp(&out[b.0..b.1]));
            // Append the pairs in order after the unsorted ones, then move them into place; this
            // reuses `out` (the thread-local buffer) instead of allocating per pair.
            let body_start = self.count_pos + 8;
            for &(start, end) in &pairs {
                out.extend_from_within(start..end);
            }
            out.copy_within(end.., body_start);
            out.truncate(end);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::hash_map::RandomState;
    use std::collections::{BTreeMap, HashMap};
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    use proptest::prelude::*;

    fn encode<A: Serialize + ?Sized>(args: &A) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_encode(args, &mut out).expect("encodable");
        out
    }

    fn hex(d: u128) -> String {
        format!("{d:032x}")
    }

    #[test]
    fn classic_ambiguities_differ() {
        assert_ne!(encode(&("a:b",)), encode(&("a", "b")));
        assert_ne!(encode(&("ab", "c")), encode(&("a", "bc")));
        assert_ne!(encode(&1u32), encode("1"));
        assert_ne!(encode(&1u32), encode(&1u64));
        assert_ne!(encode(&1u32), encode(&1i32));
        assert_ne!(encode(&Some(())), encode(&()));
        assert_ne!(encode(&None::<()>), encode(&()));
        assert_ne!(encode(&Some(None::<u8>)), encode(&None::<Option<u8>>));
        assert_ne!(
            encode(&vec![vec![1u8], vec![]]),
            encode(&vec![vec![], vec![1u8]])
        );
        assert_ne!(encode(&vec![1u8, 2]), encode(&(1u8, 2u8)));
        assert_ne!(encode("a"), encode(&'a'));
        assert_ne!(encode(&Vec::<u8>::new()), encode(&()));
        assert_ne!(
            encode(&BTreeMap::<u8, u8>::new()),
            encode(&Vec::<u8>::new())
        );
        assert_ne!(
            encode(&vec![(1u8, 2u8)]),
            encode(&BTreeMap::from([(1u8, 2u8)]))
        );
    }

    #[test]
    fn prefix_and_job_boundaries_are_unambiguous() {
        let d = |p, j| digest(p, j, &()).unwrap();
        assert_ne!(d("a", "b:c"), d("a:b", "c"));
        assert_ne!(d("ab", "c"), d("a", "bc"));
        assert_ne!(d("p", "job"), d("p", "job2"));
        assert_ne!(
            digest("p", "j", &("a", "b")).unwrap(),
            digest("p", "j", &("a:b",)).unwrap()
        );
    }

    #[derive(Serialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Serialize)]
    struct PointRenamed {
        x: i32,
        #[serde(rename = "z")]
        y: i32,
    }

    #[derive(Serialize)]
    struct OtherTypeName {
        x: i32,
        y: i32,
    }

    #[derive(Serialize)]
    enum Shape {
        Dot,
        Circle(u32),
        Line(u32, u32),
        Rect { w: u32, h: u32 },
    }

    #[derive(Serialize)]
    enum ShapeRenamed {
        #[serde(rename = "Point")]
        Dot,
    }

    #[derive(Serialize)]
    enum ShapeReordered {
        Circle(u32),
        Dot,
    }

    #[test]
    fn names_are_part_of_the_encoding_but_type_names_are_not() {
        assert_ne!(
            encode(&Point { x: 1, y: 2 }),
            encode(&PointRenamed { x: 1, y: 2 })
        );
        assert_eq!(
            encode(&Point { x: 1, y: 2 }),
            encode(&OtherTypeName { x: 1, y: 2 })
        );
        assert_ne!(encode(&Shape::Dot), encode(&ShapeRenamed::Dot));
        assert_ne!(
            encode(&Shape::Circle(1)),
            encode(&ShapeReordered::Circle(1))
        );
        assert_ne!(encode(&Shape::Dot), encode(&ShapeReordered::Dot));
        assert_ne!(encode(&Shape::Dot), encode(&()));
        assert_ne!(encode(&Shape::Circle(3)), encode(&3u32));
        assert_ne!(encode(&Shape::Line(1, 2)), encode(&(1u32, 2u32)));
        assert_ne!(
            encode(&Shape::Rect { w: 1, h: 2 }),
            encode(&Point { x: 1, y: 2 })
        );
    }

    #[test]
    fn exact_bytes_of_a_small_value() {
        // Spelled out so the table in the module docs can be checked against the code.
        let mut expected = vec![TAG_TUPLE];
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&[TAG_U8, 7]);
        expected.extend_from_slice(&[TAG_STR, 0, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        expected.push(TAG_UNIT_VARIANT);
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, b'D', b'o', b't']);
        assert_eq!(encode(&(7u8, "hi", Shape::Dot)), expected);

        let mut expected = vec![TAG_STRUCT];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, b'a', TAG_SOME, TAG_BOOL, 1]);
        #[derive(Serialize)]
        struct S {
            a: Option<bool>,
        }
        assert_eq!(encode(&S { a: Some(true) }), expected);
    }

    #[test]
    fn floats_normalise_nan_but_keep_the_sign_of_zero() {
        let quiet = f64::NAN;
        let payload = f64::from_bits(0x7FF8_0000_0000_0001);
        let negative = -f64::NAN;
        assert!(payload.is_nan() && negative.is_nan());
        assert_eq!(encode(&quiet), encode(&payload));
        assert_eq!(encode(&quiet), encode(&negative));
        assert_ne!(encode(&0.0f64), encode(&-0.0f64));
        assert_ne!(encode(&1.0f64), encode(&1.0f32));

        let payload32 = f32::from_bits(0xFFC0_0001);
        assert!(payload32.is_nan());
        assert_eq!(encode(&f32::NAN), encode(&payload32));
        assert_ne!(encode(&0.0f32), encode(&-0.0f32));
        assert_eq!(
            encode(&f32::NAN),
            [&[TAG_F32][..], &CANONICAL_NAN_F32.to_be_bytes()].concat()
        );
    }

    /// A deterministic hasher with a chosen seed, so that two maps really iterate differently.
    #[derive(Clone, Default)]
    struct Seeded(u64);

    impl BuildHasher for Seeded {
        type Hasher = DefaultHasher;

        fn build_hasher(&self) -> DefaultHasher {
            use std::hash::Hasher as _;
            let mut h = DefaultHasher::new();
            h.write_u64(self.0);
            h
        }
    }

    #[test]
    fn hash_maps_are_order_independent() {
        let items: Vec<(String, u32)> = (0..50).map(|i| (format!("k{i}"), i)).collect();

        let forward: HashMap<_, _> = items.iter().cloned().collect();
        let mut backward = HashMap::with_hasher(RandomState::new());
        for (k, v) in items.iter().rev().cloned() {
            backward.insert(k, v);
        }
        let mut seeded = HashMap::with_hasher(Seeded(42));
        seeded.extend(items.iter().cloned());
        let mut other_seed = HashMap::with_hasher(Seeded(7));
        other_seed.extend(items.iter().rev().cloned());
        let fixed: HashMap<_, _, BuildHasherDefault<DefaultHasher>> =
            items.iter().cloned().collect();
        let btree: BTreeMap<_, _> = items.iter().cloned().collect();

        // Make sure the test would notice a non-sorting encoder.
        let order = |m: &HashMap<String, u32, Seeded>| m.keys().cloned().collect::<Vec<_>>();
        assert_ne!(order(&seeded), order(&other_seed));

        let expected = encode(&btree);
        assert_eq!(encode(&forward), expected);
        assert_eq!(encode(&backward), expected);
        assert_eq!(encode(&seeded), expected);
        assert_eq!(encode(&other_seed), expected);
        assert_eq!(encode(&fixed), expected);

        // Nested maps, inside other structure.
        let nest = |s: u64| {
            let mut outer = HashMap::with_hasher(Seeded(s));
            for i in 0..10u32 {
                let mut inner = HashMap::with_hasher(Seeded(s.wrapping_mul(31) + u64::from(i)));
                for j in 0..10u32 {
                    inner.insert(j, format!("{i}-{j}"));
                }
                outer.insert(format!("o{i}"), (i, inner));
            }
            vec![outer]
        };
        assert_eq!(encode(&nest(1)), encode(&nest(2)));
        assert_eq!(
            digest("p", "j", &nest(3)).unwrap(),
            digest("p", "j", &nest(4)).unwrap()
        );
    }

    #[test]
    fn map_count_is_the_number_of_pairs() {
        let mut expected = vec![TAG_MAP];
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[TAG_U8, 1, TAG_U8, 10, TAG_U8, 2, TAG_U8, 20]);
        assert_eq!(encode(&HashMap::from([(2u8, 20u8), (1, 10)])), expected);
    }

    /// A `Serialize` impl that lies about its length and skips items.
    struct Liar;

    impl Serialize for Liar {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeSeq as _;
            let mut seq = s.serialize_seq(Some(10))?;
            seq.serialize_element(&1u8)?;
            seq.end()
        }
    }

    #[test]
    fn counts_are_what_was_written_not_the_hint() {
        assert_eq!(encode(&Liar), encode(&vec![1u8]));
    }

    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("no can do"))
        }
    }

    #[test]
    fn serialize_errors_are_reported() {
        let err = digest("p", "j", &(1u8, Failing)).unwrap_err();
        assert_eq!(err, KeyError::Serialize("no can do".to_owned()));
        assert_eq!(err.to_string(), "args could not be serialized: no can do");
    }

    #[test]
    fn golden_digests() {
        // These pin the key format across releases: if one changes, every existing cache entry
        // would silently become unreachable. Change them only together with a deliberate,
        // announced format change. The first two were cross-checked against the reference
        // xxHash (python-xxhash: XXH3-64 of the length-prefixed prefix and job name as the seed
        // of XXH3-128) over encodings built by hand from the table in the module docs.
        assert_eq!(
            hex(digest("app", "job", &()).unwrap()),
            "ab8d06f7aa8c4f6a825905c6c7657304"
        );
        assert_eq!(
            hex(digest("myapp", "my_crate::user_tweets", &("alice", 20u32)).unwrap()),
            "041d02fabf834731bc1aa6b09b955d5d"
        );
        assert_eq!(
            hex(digest(
                "myapp",
                "report",
                &(
                    Shape::Rect { w: 3, h: 4 },
                    Some(-1.5f64),
                    BTreeMap::from([("b", vec![2i64]), ("a", vec![])]),
                )
            )
            .unwrap()),
            "3025aaa95b3d98155db1697a6e191699"
        );
        assert_eq!(
            hex(digest("x", "y", &Point { x: -7, y: 7 }).unwrap()),
            "2ebe923bd386a9e1b4f47093b1b54c43"
        );
    }

    #[test]
    fn display_format_parses_back() {
        let job = "my_crate::user_tweets";
        let d = digest("myapp", job, &("alice", 20u32)).unwrap();
        let text = Key::new("myapp", job, d).to_string();
        assert_eq!(text.len(), "myapp".len() + 1 + job.len() + 1 + 32);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));

        let (prefix, rest) = text.split_once(':').unwrap();
        let (job_part, hex_part) = rest.split_at(rest.len() - 32);
        let job_part = job_part.strip_suffix(':').unwrap();
        assert_eq!((prefix, job_part), ("myapp", job));
        assert!(
            hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(u128::from_str_radix(hex_part, 16).unwrap(), d);

        // Leading zeros are kept so the digest is always the last 32 characters.
        assert_eq!(
            Key::new("p", "j", 1).to_string(),
            "p:j:00000000000000000000000000000001"
        );
        assert_eq!(
            Key::new("p", "j", u128::MAX).to_string(),
            format!("p:j:{}", "f".repeat(32))
        );
    }

    #[test]
    fn longest_valid_key_is_memcached_safe() {
        let prefix = "p".repeat(MAX_PREFIX_LEN);
        let job = ":".repeat(MAX_JOB_NAME_LEN);
        validate_prefix(&prefix).unwrap();
        validate_job_name(&job).unwrap();
        let text = Key::new(&prefix, &job, u128::MAX).to_string();
        assert_eq!(text.len(), 226);
        assert!(text.len() < 250);
    }

    #[test]
    fn key_accessors() {
        let key = Key::new("a", "b", 3);
        assert_eq!((key.prefix(), key.job(), key.digest()), ("a", "b", 3));
    }

    #[test]
    fn prefix_validation() {
        for ok in ["a", "myapp", "My-App_2.0", &"x".repeat(MAX_PREFIX_LEN)] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_prefix(""), Err(KeyError::EmptyPrefix));
        assert!(matches!(
            validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)),
            Err(KeyError::PrefixTooLong { len: 65, .. })
        ));
        for bad in ["a:b", "a b", "a\tb", "a\n", "é", "a/b", "a{b}", "a\u{0}"] {
            assert!(
                matches!(validate_prefix(bad), Err(KeyError::InvalidPrefix { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_prefix("a:b").unwrap_err().to_string(),
            "prefix `a:b` contains `:`, which separates the parts of a key"
        );
    }

    #[test]
    fn job_name_validation() {
        for ok in [
            "j",
            "user_tweets",
            "my_crate::user_tweets",
            "a/b@c!#$%&*",
            &"x".repeat(MAX_JOB_NAME_LEN),
        ] {
            assert_eq!(validate_job_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_job_name(""), Err(KeyError::EmptyJobName));
        assert!(matches!(
            validate_job_name(&"x".repeat(MAX_JOB_NAME_LEN + 1)),
            Err(KeyError::JobNameTooLong { len: 129, .. })
        ));
        for bad in [
            "a b", "a\tb", "a\r\n", "\u{7f}", "naïve", "a\u{a0}b", "{tag}", "a}",
        ] {
            assert!(
                matches!(validate_job_name(bad), Err(KeyError::InvalidJobName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_job_name("a b").unwrap_err().to_string(),
            "job name `a b` contains whitespace or a control character"
        );
        assert_eq!(
            validate_job_name("a\nb").unwrap_err().to_string(),
            "job name `a\\nb` contains whitespace or a control character"
        );
        assert_eq!(
            validate_job_name("é").unwrap_err().to_string(),
            "job name `é` contains a non-ASCII character"
        );
        let long = validate_job_name(&"y".repeat(1000))
            .unwrap_err()
            .to_string();
        assert!(long.starts_with(&format!("job name `{}...` is 1000 bytes", "y".repeat(80))));
    }

    #[test]
    fn repeated_digests_reuse_the_buffer_and_agree() {
        let args = (
            String::from("alice"),
            vec![1u64, 2, 3],
            HashMap::from([("k", 1u8)]),
        );
        let first = digest("p", "j", &args).unwrap();
        for _ in 0..1000 {
            assert_eq!(digest("p", "j", &args).unwrap(), first);
        }
        // The same value through a fresh buffer gives the same digest.
        assert_eq!(
            digest_with(&mut Vec::new(), job_seed("p", "j"), &args).unwrap(),
            first
        );
        // From other threads, too.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let args = args.clone();
                std::thread::spawn(move || digest("p", "j", &args).unwrap())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), first);
        }
    }

    fn scratch_capacity() -> usize {
        SCRATCH.with(|s| s.borrow().capacity())
    }

    #[test]
    fn oversized_args_are_rejected_and_the_buffer_shrinks() {
        let too_large = Err(KeyError::ArgsTooLarge {
            limit: MAX_ARGS_LEN,
        });
        // A str costs a tag and an 8-byte length on top of its bytes.
        let fits = "x".repeat(MAX_ARGS_LEN - 9);
        assert_eq!(encode(fits.as_str()).len(), MAX_ARGS_LEN);
        assert!(digest("p", "j", fits.as_str()).is_ok());
        assert!(scratch_capacity() <= MAX_RETAINED_CAPACITY);

        let over = "x".repeat(MAX_ARGS_LEN - 8);
        assert_eq!(digest("p", "j", over.as_str()), too_large);
        // Many small items: fails part-way, without buffering all of them.
        let many = vec![0u32; MAX_ARGS_LEN];
        assert_eq!(digest("p", "j", &many), too_large);
        // Through map sorting as well.
        let map: HashMap<u32, u32> = (0..200_000).map(|i| (i, i)).collect();
        assert_eq!(digest("p", "j", &map), too_large);
        assert!(scratch_capacity() <= MAX_RETAINED_CAPACITY);

        // Still usable afterwards.
        assert_eq!(
            digest("p", "j", &()).unwrap(),
            digest_with(&mut Vec::new(), job_seed("p", "j"), &()).unwrap()
        );
    }

    /// A `Serialize` impl that computes a digest itself, re-entering `digest`.
    struct Reentrant(u32);

    impl Serialize for Reentrant {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let inner = digest("inner", "job", &self.0).map_err(ser::Error::custom)?;
            s.serialize_u128(inner)
        }
    }

    #[test]
    fn reentrant_digest_does_not_panic() {
        let inner = digest("inner", "job", &5u32).unwrap();
        assert_eq!(
            digest("p", "j", &Reentrant(5)).unwrap(),
            digest("p", "j", &inner).unwrap()
        );
        assert_eq!(
            digest("p", "j", &vec![Reentrant(1), Reentrant(2)]).unwrap(),
            digest_with(
                &mut Vec::new(),
                job_seed("p", "j"),
                &vec![Reentrant(1), Reentrant(2)]
            )
            .unwrap()
        );
    }

    /// Raw bytes, serialized with `serialize_bytes` rather than as a sequence.
    #[derive(Clone, Debug, PartialEq)]
    struct Blob(Vec<u8>);

    impl Serialize for Blob {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    #[derive(Clone, Debug, PartialEq, Serialize)]
    struct Inner {
        name: String,
        id: u8,
        child: Option<Box<Value>>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize)]
    struct Newtype(u8);

    #[derive(Clone, Debug, PartialEq, Serialize)]
    struct Unit;

    /// Covers every kind of serde value, with small domains so that equal and nearly-equal values
    /// come up often.
    #[derive(Clone, Debug, PartialEq, Serialize)]
    enum Value {
        Unit,
        UnitStruct(Unit),
        Bool(bool),
        I8(i8),
        I64(i64),
        I128(i128),
        U8(u8),
        OtherU8(u8),
        U32(u32),
        U128(u128),
        Char(char),
        Str(String),
        Bytes(Blob),
        Newtype(Newtype),
        Tuple(u8, String),
        Pair(Box<(Value, Value)>),
        Opt(Option<Box<Value>>),
        List(Vec<Value>),
        Map(HashMap<String, Value>),
        IntMap(BTreeMap<u8, Value>),
        Nested(Inner),
        Record { a: u8, b: String },
    }

    fn small_str() -> impl Strategy<Value = String> {
        "[ab:]{0,3}"
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Unit),
            Just(Value::UnitStruct(Unit)),
            any::<bool>().prop_map(Value::Bool),
            (-2i8..2).prop_map(Value::I8),
            (-2i64..2).prop_map(Value::I64),
            (-2i128..2).prop_map(Value::I128),
            (0u8..3).prop_map(Value::U8),
            (0u8..3).prop_map(Value::OtherU8),
            (0u32..3).prop_map(Value::U32),
            prop_oneof![Just(0u128), Just(1), Just(u128::MAX)].prop_map(Value::U128),
            prop::char::range('`', 'c').prop_map(Value::Char),
            small_str().prop_map(Value::Str),
            prop::collection::vec(0u8..3, 0..3).prop_map(|b| Value::Bytes(Blob(b))),
            (0u8..3).prop_map(|n| Value::Newtype(Newtype(n))),
            ((0u8..3), small_str()).prop_map(|(n, s)| Value::Tuple(n, s)),
            ((0u8..3), small_str()).prop_map(|(a, b)| Value::Record { a, b }),
        ];
        leaf.prop_recursive(4, 48, 4, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|p| Value::Pair(Box::new(p))),
                prop::option::of(inner.clone()).prop_map(|o| Value::Opt(o.map(Box::new))),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                prop::collection::hash_map(small_str(), inner.clone(), 0..4).prop_map(Value::Map),
                prop::collection::btree_map(0u8..4, inner.clone(), 0..4).prop_map(Value::IntMap),
                (small_str(), 0u8..3, prop::option::of(inner)).prop_map(|(name, id, child)| {
                    Value::Nested(Inner {
                        name,
                        id,
                        child: child.map(Box::new),
                    })
                }),
            ]
        })
    }

    /// An equal value whose hash maps are rebuilt with a fresh seed and reversed insertion order.
    fn reshuffle(v: &Value) -> Value {
        let boxed = |b: &Value| Box::new(reshuffle(b));
        match v {
            Value::Pair(p) => Value::Pair(Box::new((reshuffle(&p.0), reshuffle(&p.1)))),
            Value::Opt(o) => Value::Opt(o.as_deref().map(boxed)),
            Value::List(l) => Value::List(l.iter().map(reshuffle).collect()),
            Value::Map(m) => {
                let mut out = HashMap::with_capacity(m.len() * 3);
                let mut entries: Vec<_> = m.iter().collect();
                entries.reverse();
                for (k, v) in entries {
                    out.insert(k.clone(), reshuffle(v));
                }
                Value::Map(out)
            }
            Value::IntMap(m) => Value::IntMap(m.iter().map(|(k, v)| (*k, reshuffle(v))).collect()),
            Value::Nested(i) => Value::Nested(Inner {
                name: i.name.clone(),
                id: i.id,
                child: i.child.as_deref().map(boxed),
            }),
            other => other.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encoding_is_injective(a in value(), b in value()) {
            let (ea, eb) = (encode(&a), encode(&b));
            if a == b {
                prop_assert_eq!(ea, eb);
            } else {
                prop_assert_ne!(ea, eb);
            }
        }

        #[test]
        fn equal_values_encode_equally(a in value()) {
            let b = reshuffle(&a);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(encode(&a), encode(&b));
            prop_assert_eq!(digest("p", "j", &a).unwrap(), digest("p", "j", &b).unwrap());
        }

        #[test]
        fn lists_of_values_are_injective(a in prop::collection::vec(value(), 0..3),
                                         b in prop::collection::vec(value(), 0..3)) {
            // Concatenation-style ambiguities only show up across sibling values.
            prop_assert_eq!(a == b, encode(&a) == encode(&b));
        }

        #[test]
        fn valid_names_make_parseable_keys(prefix in "[A-Za-z0-9_.-]{1,64}",
                                           job in "[!-z|~]{1,128}",
                                           d in any::<u128>()) {
            prop_assert_eq!(validate_prefix(&prefix), Ok(()));
            prop_assert_eq!(validate_job_name(&job), Ok(()));
            let text = Key::new(&prefix, &job, d).to_string();
            prop_assert!(text.len() <= 226);
            let memcached_safe = text.bytes().all(|b| b.is_ascii_graphic() && !b"{}".contains(&b));
            prop_assert!(memcached_safe);
            let (p, rest) = text.split_once(':').unwrap();
            let (j, h) = rest.split_at(rest.len() - 32);
            prop_assert_eq!(p, prefix.as_str());
            prop_assert_eq!(j.strip_suffix(':'), Some(job.as_str()));
            prop_assert_eq!(u128::from_str_radix(h, 16).unwrap(), d);
        }
    }
}
