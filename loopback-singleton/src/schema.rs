//! The structure of the types that cross the wire: [`Schema`], its derive, and its
//! implementations for the standard types.
//!
//! The descriptions are `postcard-schema`'s data model (`NamedType`: field and variant
//! names and order, primitive kinds, sequences, maps, options), which `postcard` itself
//! follows. The trait is ours rather than `postcard_schema::Schema` for two reasons: that
//! crate leaves out `usize` and `isize` (their width varies between targets; here both
//! ends run on one machine, and postcard writes them as varints anyway), and a trait of
//! our own carries a diagnostic that tells a user what to derive, even for a type nested
//! inside another (`Result<u64, MyError>`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::num::{
    NonZeroI8, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroI128, NonZeroU8, NonZeroU16, NonZeroU32,
    NonZeroU64, NonZeroU128,
};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use postcard_schema::schema::{
    DataModelType, DataModelVariant, NamedType, NamedValue, NamedVariant,
};

/// A type whose structure is known at compile time, so that a service's schema
/// fingerprint covers it: every argument, return and `#[init]` type of a
/// `#[local_singleton]` must implement it (besides serde's `Serialize` and `Deserialize`).
///
/// Derive it: `#[derive(Serialize, Deserialize, loopback_singleton::Schema)]`. The
/// standard types that serde supports implement it already: integers, floats, `bool`,
/// `char`, `String`, `str`, `()`, tuples, arrays, slices, `Vec`, `VecDeque`, `Option`,
/// `Result`, `Box`, `Rc`, `Arc`, `Cow`, `HashMap`, `BTreeMap`, `HashSet`, `BTreeSet`,
/// `PathBuf`, `Duration`, and `serde_bytes`'s `ByteBuf`, `Bytes` and `ByteArray`.
///
/// The derive honours `#[serde(rename = "...")]`; other serde attributes that change the
/// encoding (`skip`, `flatten`, `with`, `untagged`...) are not reflected in the schema.
/// A recursive type has no finite description and can't derive it (the compiler reports
/// a cycle): leave it unchecked with `#[unchecked_schema]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` crosses the wire but has no `loopback_singleton::Schema`",
    label = "`{Self}` needs `Schema`",
    note = "derive it next to serde's: `#[derive(Serialize, Deserialize, loopback_singleton::Schema)]`",
    note = "for a type you can't derive on, mark the argument (for a return type: the method) \
            `#[unchecked_schema]`; a change of that type's shape between two builds then goes \
            undetected"
)]
pub trait Schema {
    /// The type's structure.
    const SCHEMA: &'static NamedType;
}

/// The hash of a type's structure that the schema fingerprint folds in (names of fields
/// and variants included, the names of types not). A const fn: the generated
/// `Service::SCHEMA` calls it, so the compiler computes it, never the program. Its bound
/// is where a type without `Schema` is reported, with the diagnostic of [`Schema`].
///
/// The encoding hashed is self-delimiting, so that two structures never feed the same
/// bytes: every node starts with its own tag, every list with its length, every name
/// with its length. (postcard-schema's own key hash, made to tell endpoints apart, has
/// neither counts nor lengths: `enum E { A(K), B }` with `K { X }` and
/// `enum E { A(K), X, B }` with `K {}` hashed alike.)
#[doc(hidden)]
pub const fn shape<T: Schema + ?Sized>() -> u64 {
    walk::named_type(walk::FNV_OFFSET, T::SCHEMA)
}

/// The const walk behind [`shape`]: FNV-1a over a tagged, length-prefixed encoding.
mod walk {
    use super::{DataModelType as M, DataModelVariant as V, NamedType};

    pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

    const fn bytes(mut hash: u64, bytes: &[u8]) -> u64 {
        let mut at = 0;
        while at < bytes.len() {
            hash = (hash ^ bytes[at] as u64).wrapping_mul(FNV_PRIME);
            at += 1;
        }
        hash
    }

    const fn tag(hash: u64, tag: u8) -> u64 {
        bytes(hash, &[tag])
    }

    const fn count(hash: u64, count: usize) -> u64 {
        bytes(hash, &(count as u64).to_le_bytes())
    }

    const fn name(hash: u64, name: &str) -> u64 {
        bytes(count(hash, name.len()), name.as_bytes())
    }

    const fn list(mut hash: u64, types: &[&NamedType]) -> u64 {
        hash = count(hash, types.len());
        let mut at = 0;
        while at < types.len() {
            hash = named_type(hash, types[at]);
            at += 1;
        }
        hash
    }

    pub(super) const fn named_type(hash: u64, ty: &NamedType) -> u64 {
        model(hash, ty.ty)
    }

    const fn model(hash: u64, model: &M) -> u64 {
        match model {
            M::Bool => tag(hash, 1),
            M::I8 => tag(hash, 2),
            M::U8 => tag(hash, 3),
            M::I16 => tag(hash, 4),
            M::I32 => tag(hash, 5),
            M::I64 => tag(hash, 6),
            M::I128 => tag(hash, 7),
            M::U16 => tag(hash, 8),
            M::U32 => tag(hash, 9),
            M::U64 => tag(hash, 10),
            M::U128 => tag(hash, 11),
            M::Usize => tag(hash, 12),
            M::Isize => tag(hash, 13),
            M::F32 => tag(hash, 14),
            M::F64 => tag(hash, 15),
            M::Char => tag(hash, 16),
            M::String => tag(hash, 17),
            M::ByteArray => tag(hash, 18),
            M::Option(inner) => named_type(tag(hash, 19), inner),
            M::Unit => tag(hash, 20),
            M::UnitStruct => tag(hash, 21),
            M::NewtypeStruct(inner) => named_type(tag(hash, 22), inner),
            M::Seq(inner) => named_type(tag(hash, 23), inner),
            M::Tuple(types) => list(tag(hash, 24), types),
            M::TupleStruct(types) => list(tag(hash, 25), types),
            M::Map { key, val } => named_type(named_type(tag(hash, 26), key), val),
            M::Struct(fields) => {
                let mut hash = count(tag(hash, 27), fields.len());
                let mut at = 0;
                while at < fields.len() {
                    hash = named_type(name(hash, fields[at].name), fields[at].ty);
                    at += 1;
                }
                hash
            }
            M::Enum(variants) => {
                let mut hash = count(tag(hash, 28), variants.len());
                let mut at = 0;
                while at < variants.len() {
                    hash = name(hash, variants[at].name);
                    hash = match variants[at].ty {
                        V::UnitVariant => tag(hash, 1),
                        V::NewtypeVariant(inner) => named_type(tag(hash, 2), inner),
                        V::TupleVariant(types) => list(tag(hash, 3), types),
                        V::StructVariant(fields) => {
                            let mut hash = count(tag(hash, 4), fields.len());
                            let mut field = 0;
                            while field < fields.len() {
                                hash = named_type(name(hash, fields[field].name), fields[field].ty);
                                field += 1;
                            }
                            hash
                        }
                    };
                    at += 1;
                }
                hash
            }
            M::Schema => tag(hash, 29),
        }
    }
}

/// A type's shape (see [`shape`]) and structure, for the generated code: one call per
/// type, so that a type without `Schema` is reported once.
#[doc(hidden)]
pub const fn wire_of<T: Schema + ?Sized>() -> (u64, &'static NamedType) {
    (shape::<T>(), T::SCHEMA)
}

/// Folds a type's shape into a fingerprint (FNV-1a over its bytes), at compile time.
#[doc(hidden)]
pub const fn fold_shape(fingerprint: u64, shape: u64) -> u64 {
    let bytes = shape.to_le_bytes();
    let mut hash = fingerprint;
    let mut index = 0;
    while index < bytes.len() {
        hash = (hash ^ bytes[index] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

macro_rules! leaf {
    ($($ty:ty => $model:ident),* $(,)?) => {$(
        impl Schema for $ty {
            const SCHEMA: &'static NamedType =
                &NamedType { name: stringify!($ty), ty: &DataModelType::$model };
        }
    )*};
}

leaf! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, i32 => I32, i64 => I64, i128 => I128,
    u16 => U16, u32 => U32, u64 => U64, u128 => U128, usize => Usize, isize => Isize,
    f32 => F32, f64 => F64, char => Char, str => String, String => String,
    PathBuf => String, () => Unit,
    NonZeroI8 => I8, NonZeroI16 => I16, NonZeroI32 => I32, NonZeroI64 => I64,
    NonZeroI128 => I128, NonZeroU8 => U8, NonZeroU16 => U16, NonZeroU32 => U32,
    NonZeroU64 => U64, NonZeroU128 => U128,
}

// Byte strings (serde's `bytes`): `serde_bytes`'s types.
leaf! { serde_bytes::ByteBuf => ByteArray, serde_bytes::Bytes => ByteArray }

impl<const N: usize> Schema for serde_bytes::ByteArray<N> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "ByteArray",
        ty: &DataModelType::ByteArray,
    };
}

macro_rules! transparent {
    ($($ty:ident),*) => {$(
        impl<T: Schema + ?Sized> Schema for $ty<T> {
            const SCHEMA: &'static NamedType = T::SCHEMA;
        }
    )*};
}

transparent!(Box, Rc, Arc);

impl<T: Schema + ?Sized> Schema for &T {
    const SCHEMA: &'static NamedType = T::SCHEMA;
}

impl<T: Schema + ToOwned + ?Sized> Schema for Cow<'_, T> {
    const SCHEMA: &'static NamedType = T::SCHEMA;
}

macro_rules! seq {
    ($($ty:ident),*) => {$(
        impl<T: Schema> Schema for $ty<T> {
            const SCHEMA: &'static NamedType =
                &NamedType { name: stringify!($ty), ty: &DataModelType::Seq(T::SCHEMA) };
        }
    )*};
}

seq!(Vec, VecDeque, BTreeSet);

impl<T: Schema, S> Schema for HashSet<T, S> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "HashSet",
        ty: &DataModelType::Seq(T::SCHEMA),
    };
}

impl<T: Schema> Schema for [T] {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "[T]",
        ty: &DataModelType::Seq(T::SCHEMA),
    };
}

impl<T: Schema, const N: usize> Schema for [T; N] {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "[T; N]",
        ty: &DataModelType::Tuple(&[T::SCHEMA; N]),
    };
}

impl<K: Schema, V: Schema> Schema for BTreeMap<K, V> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "BTreeMap",
        ty: &DataModelType::Map {
            key: K::SCHEMA,
            val: V::SCHEMA,
        },
    };
}

impl<K: Schema, V: Schema, S> Schema for HashMap<K, V, S> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "HashMap",
        ty: &DataModelType::Map {
            key: K::SCHEMA,
            val: V::SCHEMA,
        },
    };
}

impl<T: Schema> Schema for Option<T> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "Option",
        ty: &DataModelType::Option(T::SCHEMA),
    };
}

impl<T: Schema, E: Schema> Schema for Result<T, E> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "Result",
        ty: &DataModelType::Enum(&[
            &NamedVariant {
                name: "Ok",
                ty: &DataModelVariant::NewtypeVariant(T::SCHEMA),
            },
            &NamedVariant {
                name: "Err",
                ty: &DataModelVariant::NewtypeVariant(E::SCHEMA),
            },
        ]),
    };
}

impl Schema for Duration {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "Duration",
        ty: &DataModelType::Struct(&[
            &NamedValue {
                name: "secs",
                ty: u64::SCHEMA,
            },
            &NamedValue {
                name: "nanos",
                ty: u32::SCHEMA,
            },
        ]),
    };
}

impl<T: ?Sized> Schema for PhantomData<T> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "PhantomData",
        ty: &DataModelType::UnitStruct,
    };
}

macro_rules! tuple {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: Schema),+> Schema for ($($name,)+) {
            const SCHEMA: &'static NamedType = &NamedType {
                name: "tuple",
                ty: &DataModelType::Tuple(&[$($name::SCHEMA),+]),
            };
        }
    )*};
}

tuple! {
    (A) (A, B) (A, B, C) (A, B, C, D) (A, B, C, D, E) (A, B, C, D, E, F) (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H) (A, B, C, D, E, F, G, H, I) (A, B, C, D, E, F, G, H, I, J)
    (A, B, C, D, E, F, G, H, I, J, K) (A, B, C, D, E, F, G, H, I, J, K, L)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_tell_structures_apart_and_ignore_names_of_types() {
        assert_ne!(shape::<u32>(), shape::<u64>());
        assert_ne!(shape::<Vec<u8>>(), shape::<Option<u8>>());
        assert_ne!(shape::<(u8, u16)>(), shape::<(u16, u8)>());
        assert_eq!(shape::<Vec<u8>>(), shape::<[u8]>());
        assert_eq!(shape::<String>(), shape::<str>());
        assert_eq!(shape::<usize>(), shape::<usize>());
    }

    /// Structures that differ on the wire but fed postcard-schema's key hash the same
    /// bytes (no counts, no name lengths): the shape must tell each pair apart.
    #[test]
    fn shapes_are_self_delimiting() {
        use super::{DataModelType as M, DataModelVariant as V, NamedValue, NamedVariant};
        const fn named(ty: &'static M) -> NamedType {
            NamedType { name: "T", ty }
        }
        static U8: NamedType = named(&M::U8);
        static USIZE: NamedType = named(&M::Usize);
        // enum Error { Io(IoKind), Timeout } with IoKind { Read, Write } against
        // enum Error { Io(IoKind), Write, Timeout } with IoKind { Read }.
        static READ: NamedVariant = NamedVariant {
            name: "Read",
            ty: &V::UnitVariant,
        };
        static WRITE: NamedVariant = NamedVariant {
            name: "Write",
            ty: &V::UnitVariant,
        };
        static TIMEOUT: NamedVariant = NamedVariant {
            name: "Timeout",
            ty: &V::UnitVariant,
        };
        static KIND_2: NamedType = named(&M::Enum(&[&READ, &WRITE]));
        static KIND_1: NamedType = named(&M::Enum(&[&READ]));
        static IO_2: NamedVariant = NamedVariant {
            name: "Io",
            ty: &V::NewtypeVariant(&KIND_2),
        };
        static IO_1: NamedVariant = NamedVariant {
            name: "Io",
            ty: &V::NewtypeVariant(&KIND_1),
        };
        static ERROR_A: NamedType = named(&M::Enum(&[&IO_2, &TIMEOUT]));
        static ERROR_B: NamedType = named(&M::Enum(&[&IO_1, &WRITE, &TIMEOUT]));
        assert_ne!(
            walk::named_type(walk::FNV_OFFSET, &ERROR_A),
            walk::named_type(walk::FNV_OFFSET, &ERROR_B)
        );
        // { a: usize, b: u8 } against { akb: u8 }.
        static A: NamedValue = NamedValue {
            name: "a",
            ty: &USIZE,
        };
        static B: NamedValue = NamedValue { name: "b", ty: &U8 };
        static AKB: NamedValue = NamedValue {
            name: "akb",
            ty: &U8,
        };
        static TWO: NamedType = named(&M::Struct(&[&A, &B]));
        static ONE: NamedType = named(&M::Struct(&[&AKB]));
        assert_ne!(
            walk::named_type(walk::FNV_OFFSET, &TWO),
            walk::named_type(walk::FNV_OFFSET, &ONE)
        );
        // { a: Vec<(u8,)>, m: u8 } against { a: Vec<(u8, Option<u8>)> }.
        static OPT: NamedType = named(&M::Option(&U8));
        static T1: NamedType = named(&M::Tuple(&[&U8]));
        static T2: NamedType = named(&M::Tuple(&[&U8, &OPT]));
        static V1: NamedType = named(&M::Seq(&T1));
        static V2: NamedType = named(&M::Seq(&T2));
        static FA1: NamedValue = NamedValue { name: "a", ty: &V1 };
        static FM: NamedValue = NamedValue { name: "m", ty: &U8 };
        static FA2: NamedValue = NamedValue { name: "a", ty: &V2 };
        static S1: NamedType = named(&M::Struct(&[&FA1, &FM]));
        static S2: NamedType = named(&M::Struct(&[&FA2]));
        assert_ne!(
            walk::named_type(walk::FNV_OFFSET, &S1),
            walk::named_type(walk::FNV_OFFSET, &S2)
        );
    }
}
