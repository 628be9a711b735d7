//! The init fingerprint: a hash of the init arguments' serde data model in which maps
//! are unordered.
//!
//! Two processes holding equal arguments must agree on the fingerprint, but a
//! `HashMap` iterates in an order chosen at random per process, so its encoded bytes
//! differ between them. This serializer hashes every value with a type tag and lengths
//! (so that `1u8`, `1u16`, `"1"`, `None` and `Some(())` all differ, and no two
//! sequences of values run together), keeps sequences in order, and hashes each map
//! entry apart and feeds the sorted entry hashes in place of the entries: the order in
//! which `serialize_map` receives them no longer matters, at any depth.
//!
//! Type and struct names are left out (a client and its daemon share the type: the
//! schema fingerprint sees to that); field and variant names and variant indices are
//! in. What serde cannot tell apart stays apart: a `HashSet` serializes as a sequence,
//! so its order counts.

use serde::Serialize;
use serde::ser;

use super::Fingerprint;

/// The init fingerprint of `value`; `Err` if its `Serialize` implementation fails.
pub(crate) fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, Unencodable> {
    let mut hasher = blake3::Hasher::new_derive_key("loopback-singleton init fingerprint v1");
    value.serialize(Canonical(&mut hasher))?;
    let hash = hasher.finalize();
    Ok(u64::from_le_bytes(
        hash.as_bytes()[..8].try_into().expect("8 bytes"),
    ))
}

/// A `Serialize` implementation reported an error.
#[derive(Debug)]
pub(crate) struct Unencodable(String);

impl std::fmt::Display for Unencodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unencodable {}

impl ser::Error for Unencodable {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        Unencodable(message.to_string())
    }
}

/// One tag per kind of the serde data model: the first byte hashed for every value.
mod tag {
    pub const BOOL: u8 = 1;
    pub const I8: u8 = 2;
    pub const I16: u8 = 3;
    pub const I32: u8 = 4;
    pub const I64: u8 = 5;
    pub const I128: u8 = 6;
    pub const U8: u8 = 7;
    pub const U16: u8 = 8;
    pub const U32: u8 = 9;
    pub const U64: u8 = 10;
    pub const U128: u8 = 11;
    pub const F32: u8 = 12;
    pub const F64: u8 = 13;
    pub const CHAR: u8 = 14;
    pub const STR: u8 = 15;
    pub const BYTES: u8 = 16;
    pub const NONE: u8 = 17;
    pub const SOME: u8 = 18;
    pub const UNIT: u8 = 19;
    pub const UNIT_STRUCT: u8 = 20;
    pub const UNIT_VARIANT: u8 = 21;
    pub const NEWTYPE_STRUCT: u8 = 22;
    pub const NEWTYPE_VARIANT: u8 = 23;
    pub const SEQ: u8 = 24;
    pub const TUPLE: u8 = 25;
    pub const TUPLE_STRUCT: u8 = 26;
    pub const TUPLE_VARIANT: u8 = 27;
    pub const MAP: u8 = 28;
    pub const STRUCT: u8 = 29;
    pub const STRUCT_VARIANT: u8 = 30;
    /// Closes a sequence, tuple or struct (no value starts with it).
    pub const END: u8 = 0;
}

/// Hashes one value into the hasher it borrows.
struct Canonical<'a>(&'a mut blake3::Hasher);

impl Canonical<'_> {
    fn put(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update(&[tag]);
        self.0.update(bytes);
    }

    /// A tag followed by a length-prefixed byte string.
    fn put_sized(&mut self, tag: u8, bytes: &[u8]) {
        self.put(tag, &(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// A variant: its index and its name.
    fn put_variant(&mut self, tag: u8, index: u32, variant: &str) {
        self.put(tag, &index.to_le_bytes());
        self.put_sized(tag::STR, variant.as_bytes());
    }
}

impl<'a> ser::Serializer for Canonical<'a> {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Entries<'a>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(mut self, v: bool) -> Result<(), Unencodable> {
        self.put(tag::BOOL, &[u8::from(v)]);
        Ok(())
    }

    fn serialize_i8(mut self, v: i8) -> Result<(), Unencodable> {
        self.put(tag::I8, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_i16(mut self, v: i16) -> Result<(), Unencodable> {
        self.put(tag::I16, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_i32(mut self, v: i32) -> Result<(), Unencodable> {
        self.put(tag::I32, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_i64(mut self, v: i64) -> Result<(), Unencodable> {
        self.put(tag::I64, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_i128(mut self, v: i128) -> Result<(), Unencodable> {
        self.put(tag::I128, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_u8(mut self, v: u8) -> Result<(), Unencodable> {
        self.put(tag::U8, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_u16(mut self, v: u16) -> Result<(), Unencodable> {
        self.put(tag::U16, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_u32(mut self, v: u32) -> Result<(), Unencodable> {
        self.put(tag::U32, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_u64(mut self, v: u64) -> Result<(), Unencodable> {
        self.put(tag::U64, &v.to_le_bytes());
        Ok(())
    }

    fn serialize_u128(mut self, v: u128) -> Result<(), Unencodable> {
        self.put(tag::U128, &v.to_le_bytes());
        Ok(())
    }

    /// Floats by their bits, as postcard sends them (`0.0` and `-0.0` differ).
    fn serialize_f32(mut self, v: f32) -> Result<(), Unencodable> {
        self.put(tag::F32, &v.to_bits().to_le_bytes());
        Ok(())
    }

    fn serialize_f64(mut self, v: f64) -> Result<(), Unencodable> {
        self.put(tag::F64, &v.to_bits().to_le_bytes());
        Ok(())
    }

    fn serialize_char(mut self, v: char) -> Result<(), Unencodable> {
        self.put(tag::CHAR, &u32::from(v).to_le_bytes());
        Ok(())
    }

    fn serialize_str(mut self, v: &str) -> Result<(), Unencodable> {
        self.put_sized(tag::STR, v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(mut self, v: &[u8]) -> Result<(), Unencodable> {
        self.put_sized(tag::BYTES, v);
        Ok(())
    }

    fn serialize_none(mut self) -> Result<(), Unencodable> {
        self.put(tag::NONE, &[]);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(mut self, value: &T) -> Result<(), Unencodable> {
        self.put(tag::SOME, &[]);
        value.serialize(self)
    }

    fn serialize_unit(mut self) -> Result<(), Unencodable> {
        self.put(tag::UNIT, &[]);
        Ok(())
    }

    fn serialize_unit_struct(mut self, _name: &'static str) -> Result<(), Unencodable> {
        self.put(tag::UNIT_STRUCT, &[]);
        Ok(())
    }

    fn serialize_unit_variant(
        mut self,
        _name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), Unencodable> {
        self.put_variant(tag::UNIT_VARIANT, index, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        self.put(tag::NEWTYPE_STRUCT, &[]);
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        self.put_variant(tag::NEWTYPE_VARIANT, index, variant);
        value.serialize(self)
    }

    fn serialize_seq(mut self, _len: Option<usize>) -> Result<Self, Unencodable> {
        self.put(tag::SEQ, &[]);
        Ok(self)
    }

    fn serialize_tuple(mut self, _len: usize) -> Result<Self, Unencodable> {
        self.put(tag::TUPLE, &[]);
        Ok(self)
    }

    fn serialize_tuple_struct(
        mut self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self, Unencodable> {
        self.put(tag::TUPLE_STRUCT, &[]);
        Ok(self)
    }

    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, Unencodable> {
        self.put_variant(tag::TUPLE_VARIANT, index, variant);
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Entries<'a>, Unencodable> {
        Ok(Entries {
            out: self.0,
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            entry: None,
        })
    }

    fn serialize_struct(mut self, _name: &'static str, _len: usize) -> Result<Self, Unencodable> {
        self.put(tag::STRUCT, &[]);
        Ok(self)
    }

    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, Unencodable> {
        self.put_variant(tag::STRUCT_VARIANT, index, variant);
        Ok(self)
    }

    /// As postcard, which encodes what is sent: types with two forms take the compact one.
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Elements follow one another, each self-delimiting; `END` closes the sequence.
impl ser::SerializeSeq for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        value.serialize(Canonical(self.0))
    }

    fn end(mut self) -> Result<(), Unencodable> {
        self.put(tag::END, &[]);
        Ok(())
    }
}

impl ser::SerializeTuple for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Unencodable> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Unencodable> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Unencodable> {
        ser::SerializeSeq::end(self)
    }
}

/// Struct fields keep their (declared) order, each named, so that a skipped field
/// cannot be mistaken for another.
impl ser::SerializeStruct for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        self.put_sized(tag::STR, key.as_bytes());
        value.serialize(Canonical(self.0))
    }

    fn end(self) -> Result<(), Unencodable> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeStructVariant for Canonical<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }

    fn end(self) -> Result<(), Unencodable> {
        ser::SerializeSeq::end(self)
    }
}

/// A map: each entry (key, then value) is hashed on its own; at the end the entry
/// hashes are sorted and fed to the map's hasher behind their count. Equal maps give
/// equal multisets of entry hashes, whatever order the entries came in.
struct Entries<'a> {
    out: &'a mut blake3::Hasher,
    entries: Vec<[u8; 32]>,
    /// The entry whose key has been hashed, waiting for its value.
    entry: Option<blake3::Hasher>,
}

impl ser::SerializeMap for Entries<'_> {
    type Ok = ();
    type Error = Unencodable;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unencodable> {
        let mut entry = blake3::Hasher::new();
        key.serialize(Canonical(&mut entry))?;
        self.entry = Some(entry);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        let mut entry = self
            .entry
            .take()
            .ok_or_else(|| ser::Error::custom("a map value without its key"))?;
        value.serialize(Canonical(&mut entry))?;
        self.entries.push(*entry.finalize().as_bytes());
        Ok(())
    }

    fn end(mut self) -> Result<(), Unencodable> {
        if self.entry.is_some() {
            return Err(ser::Error::custom("a map key without its value"));
        }
        self.entries.sort_unstable();
        let mut out = Canonical(self.out);
        out.put(tag::MAP, &(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            out.0.update(entry);
        }
        Ok(())
    }
}

/// Fingerprint of init arguments (compared in the handshake): equal arguments agree
/// whatever order their maps iterate in (see the module documentation).
pub(crate) fn init_fingerprint<T: Serialize + ?Sized>(
    init: &T,
) -> Result<Fingerprint, Unencodable> {
    fingerprint(init)
}

/// A readable rendering of init arguments for mismatch errors (JSON where the type
/// allows it, else its fingerprint). Objects list their keys in order (map keys and
/// struct fields alike), so that equal arguments read the same whatever order their
/// maps iterate in.
pub(crate) fn describe<T: Serialize + ?Sized>(init: &T) -> String {
    /// Long enough to tell arguments apart, short enough for any message.
    const MAX: usize = 1024;
    let fingerprint = || match init_fingerprint(init) {
        Ok(fingerprint) => format!("<init arguments {fingerprint:016x}>"),
        Err(_) => "<unencodable init arguments>".to_string(),
    };
    let json = serde_json::to_value(init).and_then(|mut value| {
        value.sort_all_objects();
        serde_json::to_string(&value)
    });
    match json {
        Ok(json) if json.len() <= MAX => json,
        Ok(json) => {
            let cut = (0..=MAX - 64)
                .rev()
                .find(|&at| json.is_char_boundary(at))
                .unwrap_or(0);
            format!("{}... {}", &json[..cut], fingerprint())
        }
        Err(_) => fingerprint(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use serde::Serialize;

    use super::{describe, fingerprint};

    fn fp<T: Serialize + ?Sized>(value: &T) -> u64 {
        fingerprint(value).unwrap()
    }

    fn entries(n: u64) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("key-{i:02}"), 1000 + i)).collect()
    }

    /// A map with a fresh `RandomState`, filled in the given order.
    fn hash_map<K, V>(items: impl IntoIterator<Item = (K, V)>) -> HashMap<K, V>
    where
        K: std::hash::Hash + Eq,
    {
        let mut map = HashMap::with_hasher(RandomState::new());
        map.extend(items);
        map
    }

    /// Keys of `map` in iteration order.
    fn order<K: Clone, V>(map: &HashMap<K, V>) -> Vec<K> {
        map.keys().cloned().collect()
    }

    #[test]
    fn equal_hash_maps_agree_whatever_their_order() {
        let a = hash_map(entries(16));
        // Another RandomState and the reverse insertion order: find one that iterates
        // differently, so that the test shows what it claims.
        let b = (0..100)
            .map(|_| hash_map(entries(16).into_iter().rev()))
            .find(|b| order(b) != order(&a))
            .expect("100 random hashers all iterate like the first");
        assert_eq!(a, b);
        assert_ne!(postcard::to_stdvec(&a), postcard::to_stdvec(&b));
        assert_eq!(fp(&a), fp(&b));
        // The same entries in a BTreeMap hash alike too: a map is a map.
        let sorted: BTreeMap<_, _> = entries(16).into_iter().collect();
        assert_eq!(fp(&sorted), fp(&a));
    }

    #[test]
    fn nested_maps_agree_whatever_their_order() {
        let inner = |rev: bool| {
            let mut items = entries(8);
            if rev {
                items.reverse();
            }
            hash_map(items)
        };
        let outer = |rev: bool| {
            let mut names: Vec<_> = (0..8).map(|i| format!("group-{i}")).collect();
            if rev {
                names.reverse();
            }
            hash_map(names.into_iter().map(|name| (name, inner(rev))))
        };
        // As a value, inside a struct-like tuple, an Option and a Vec.
        let a = (7u8, Some(vec![outer(false)]), "tail");
        let b = (7u8, Some(vec![outer(true)]), "tail");
        assert_eq!(fp(&a), fp(&b));

        // Maps as keys of a map (a BTreeMap keyed by hash maps is impossible, so a Vec
        // of pairs serialized as a map stands in).
        struct PairsAsMap<K, V>(Vec<(K, V)>);
        impl<K: Serialize, V: Serialize> Serialize for PairsAsMap<K, V> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let keyed = |rev: bool| {
            let mut pairs = vec![(inner(rev), 1u32), (hash_map(entries(3)), 2u32)];
            if rev {
                pairs.reverse();
            }
            PairsAsMap(pairs)
        };
        assert_eq!(fp(&keyed(false)), fp(&keyed(true)));
    }

    #[test]
    fn different_values_differ() {
        let a = hash_map(entries(16));
        let mut changed = a.clone();
        *changed.get_mut("key-07").unwrap() += 1;
        assert_ne!(fp(&a), fp(&changed));
        let mut renamed = a.clone();
        let value = renamed.remove("key-07").unwrap();
        renamed.insert("key-7".into(), value);
        assert_ne!(fp(&a), fp(&renamed));
        let mut fewer = a.clone();
        fewer.remove("key-15");
        assert_ne!(fp(&a), fp(&fewer));

        // Types and shapes that a plain byte encoding could confuse.
        assert_ne!(fp(&1u8), fp(&"1"));
        assert_ne!(fp(&1u8), fp(&1u16));
        assert_ne!(fp(&1u8), fp(&true));
        assert_ne!(fp(&None::<()>), fp(&Some(())));
        assert_ne!(fp(&None::<Option<u8>>), fp(&Some(None::<u8>)));
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&vec![vec![1u8], vec![]]), fp(&vec![vec![], vec![1u8]]));
        assert_ne!(fp(&0.0f64), fp(&-0.0f64));
        #[derive(Serialize)]
        enum Mode {
            Fast,
            Slow,
            Sized(u32),
            Other(u32),
        }
        assert_ne!(fp(&Mode::Fast), fp(&Mode::Slow));
        assert_ne!(fp(&Mode::Sized(1)), fp(&Mode::Other(1)));
        // A map is not the sequence of its entries.
        let one: BTreeMap<u8, u8> = [(1, 2)].into();
        assert_ne!(fp(&one), fp(&vec![(1u8, 2u8)]));
        // Moving an entry from one nested map to its sibling changes the fingerprint.
        let left: BTreeMap<&str, BTreeMap<u8, u8>> =
            [("a", [(1, 1), (2, 2)].into()), ("b", [(3, 3)].into())].into();
        let right: BTreeMap<&str, BTreeMap<u8, u8>> =
            [("a", [(1, 1)].into()), ("b", [(2, 2), (3, 3)].into())].into();
        assert_ne!(fp(&left), fp(&right));
    }

    #[test]
    fn sequences_keep_their_order() {
        assert_ne!(fp(&vec![1u64, 2, 3]), fp(&vec![3u64, 2, 1]));
        assert_eq!(fp(&vec![1u64, 2, 3]), fp(&[1u64, 2, 3][..]));
        // A set serializes as a sequence: a BTreeSet is ordered, so equal sets agree.
        let a: BTreeSet<u64> = [3, 1, 2].into();
        let b: BTreeSet<u64> = [2, 3, 1].into();
        assert_eq!(fp(&a), fp(&b));
    }

    #[test]
    fn equal_values_agree_and_failures_are_reported() {
        let value = (
            1u64,
            "x",
            vec![Some(2.5f32)],
            BTreeMap::from([('k', [1u8; 3])]),
        );
        assert_eq!(fp(&value), fp(&value.clone()));
        struct Failing;
        impl Serialize for Failing {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no way"))
            }
        }
        let error = fingerprint(&vec![Failing]).unwrap_err();
        assert_eq!(error.to_string(), "no way");
    }

    #[test]
    fn init_descriptions_are_readable_and_bounded() {
        assert_eq!(describe(&(10u64, "x")), r#"[10,"x"]"#);
        let long = describe(&"é".repeat(5000));
        assert!(long.len() < 1100, "{}", long.len());
        assert!(long.contains("<init arguments "), "{long}");
    }

    #[test]
    fn init_descriptions_list_map_entries_in_order() {
        use std::collections::HashMap;
        let map = |keys: &mut dyn Iterator<Item = u32>| -> HashMap<String, u32> {
            keys.map(|i| (format!("k{i:02}"), i)).collect()
        };
        let expected = format!(
            "[{{{}}},2]",
            (0..16)
                .map(|i| format!("\"k{i:02}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(describe(&(map(&mut (0..16)), 2)), expected);
        assert_eq!(describe(&(map(&mut (0..16).rev()), 2)), expected);
        // Integer keys are JSON strings, listed as strings; nested maps are sorted too.
        let nested: HashMap<u8, HashMap<String, u32>> =
            [(10, map(&mut (0..2))), (9, map(&mut (0..1)))].into();
        assert_eq!(
            describe(&nested),
            r#"{"10":{"k00":0,"k01":1},"9":{"k00":0}}"#
        );
        // Too long: cut, and marked with the fingerprint, equal for equal arguments.
        let big = |keys: &mut dyn Iterator<Item = u32>| -> HashMap<String, String> {
            keys.map(|i| (format!("k{i:03}"), "v".repeat(20))).collect()
        };
        let (a, b) = (big(&mut (0..100)), big(&mut (0..100).rev()));
        assert_eq!(describe(&a), describe(&b));
        assert!(
            describe(&a).contains("<init arguments "),
            "{}",
            describe(&a)
        );
    }
}
