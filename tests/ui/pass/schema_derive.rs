//! `#[derive(loopback_singleton::Schema)]` with only `loopback-singleton` in scope: every
//! kind of struct and variant, generics, and `#[serde(rename)]` (trybuild runs `main`).

use loopback_singleton::Schema;
use loopback_singleton::__private::{DataModelType, DataModelVariant};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Named {
    #[serde(rename = "per_window")]
    pub window: u32,
    pub tags: Vec<String>,
    pub size: usize,
}

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Newtype(pub u64);

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Pair(pub u8, pub Option<i16>);

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Unit;

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Wrapper<T> {
    pub inner: T,
}

#[derive(Serialize, Deserialize, loopback_singleton::Schema)]
pub enum Every {
    Unit,
    Newtype(Named),
    Tuple(u8, u8),
    Struct { a: Wrapper<Newtype>, b: Pair, c: Unit },
}

fn main() {
    let DataModelType::Struct(fields) = Named::SCHEMA.ty else {
        panic!("a struct")
    };
    let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
    assert_eq!(names, ["per_window", "tags", "size"]);
    assert!(matches!(Newtype::SCHEMA.ty, DataModelType::NewtypeStruct(_)));
    assert!(matches!(Pair::SCHEMA.ty, DataModelType::TupleStruct(_)));
    assert!(matches!(Unit::SCHEMA.ty, DataModelType::UnitStruct));
    let DataModelType::Enum(variants) = Every::SCHEMA.ty else {
        panic!("an enum")
    };
    let kinds: Vec<(&str, bool)> = variants
        .iter()
        .map(|variant| {
            let unit = matches!(variant.ty, DataModelVariant::UnitVariant);
            (variant.name, unit)
        })
        .collect();
    assert_eq!(
        kinds,
        [("Unit", true), ("Newtype", false), ("Tuple", false), ("Struct", false)]
    );
    assert_eq!(Wrapper::<u8>::SCHEMA.name, "Wrapper");
}
