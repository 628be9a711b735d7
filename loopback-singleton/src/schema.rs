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
/// and variants included, the type's own name not). A const fn: the generated
/// `Service::SCHEMA` calls it, so the compiler computes it, never the program. Its bound
/// is where a type without `Schema` is reported, with the diagnostic of [`Schema`].
#[doc(hidden)]
pub const fn shape<T: Schema + ?Sized>() -> u64 {
    u64::from_le_bytes(postcard_schema::key::hash::fnv1a64::hash_ty_path::<Bridge<T>>(""))
}

/// A type's shape (see [`shape`]) and structure, for the generated code: one call per
/// type, so that a type without `Schema` is reported once.
#[doc(hidden)]
pub const fn wire_of<T: Schema + ?Sized>() -> (u64, &'static NamedType) {
    (shape::<T>(), T::SCHEMA)
}

/// Lends `postcard_schema`'s const hash our descriptions.
struct Bridge<T: ?Sized>(PhantomData<T>);

impl<T: Schema + ?Sized> postcard_schema::Schema for Bridge<T> {
    const SCHEMA: &'static NamedType = T::SCHEMA;
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
}
