//! The canonical encoding of a job's args: the bytes that [`digest`](super::digest()) hashes.
//!
//! It is part of the on-store format (every key depends on it), so it is defined here byte for
//! byte and pinned by golden tests.
//!
//! # Format
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

use serde::Serialize;
use serde::ser;

use super::{KeyError, MAX_ARGS_LEN};

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

/// Appends `len` as a `u64` big-endian: the length prefix of names, strings and bytes here, and of
/// the prefix and job name in a job's seed.
pub(super) fn put_len(out: &mut Vec<u8>, len: usize) {
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

/// Defines the integer methods of the serializer: each width has a tag of its own and a
/// big-endian payload.
macro_rules! serialize_ints {
    ($($method:ident($ty:ty) => $tag:ident,)*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            self.tagged($tag, &v.to_be_bytes())
        }
    )*};
}

/// Defines the float methods of the serializer: the IEEE 754 bits, big-endian, with every NaN
/// written as the one canonical NaN.
macro_rules! serialize_floats {
    ($($method:ident($ty:ty) => $tag:ident, NaN as $nan:ident,)*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            let bits = if v.is_nan() { $nan } else { v.to_bits() };
            self.tagged($tag, &bits.to_be_bytes())
        }
    )*};
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

    serialize_ints! {
        serialize_i8(i8) => TAG_I8,
        serialize_i16(i16) => TAG_I16,
        serialize_i32(i32) => TAG_I32,
        serialize_i64(i64) => TAG_I64,
        serialize_i128(i128) => TAG_I128,
        serialize_u8(u8) => TAG_U8,
        serialize_u16(u16) => TAG_U16,
        serialize_u32(u32) => TAG_U32,
        serialize_u64(u64) => TAG_U64,
        serialize_u128(u128) => TAG_U128,
    }

    serialize_floats! {
        serialize_f32(f32) => TAG_F32, NaN as CANONICAL_NAN_F32,
        serialize_f64(f64) => TAG_F64, NaN as CANONICAL_NAN_F64,
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

/// Implements one of serde's compound-serializer traits for [`Compound`]: the six differ only in
/// the trait and its method's name, and whether items are named fields.
macro_rules! impl_compound {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = KeyError;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
                self.item(value)
            }

            fn end(self) -> Result<(), KeyError> {
                self.finish()
            }
        }
    };
    ($trait:ident, $method:ident, named) => {
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = KeyError;

            fn $method<T: Serialize + ?Sized>(
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
    };
}

impl_compound!(SerializeSeq, serialize_element);
impl_compound!(SerializeTuple, serialize_element);
impl_compound!(SerializeTupleStruct, serialize_field);
impl_compound!(SerializeTupleVariant, serialize_field);
impl_compound!(SerializeStruct, serialize_field, named);
impl_compound!(SerializeStructVariant, serialize_field, named);

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
mod tests;
