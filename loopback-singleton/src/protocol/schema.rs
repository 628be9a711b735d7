//! The wire description a daemon sends a client whose schema fingerprint differs from
//! its own, and the comparison that tells the user what differs.
//!
//! A description lists, in order, every type that crosses the wire with the place it
//! crosses it (`set_quota(quota)`, `set_quota ->`, `#[init](start)`), each with its
//! structure (`None` for a type marked `#[unchecked_schema]`). Built once per daemon;
//! sent only with a schema rejection.

use postcard_schema::schema::owned::{
    OwnedDataModelType as Model, OwnedDataModelVariant as VariantModel, OwnedNamedType,
    OwnedNamedValue, OwnedNamedVariant,
};
use serde::{Deserialize, Serialize};

/// One type crossing the wire, where it crosses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WireItem {
    /// `method(argument)`, `method ->` or `#[init](argument)`.
    pub place: String,
    /// The type's structure; `None` for an `#[unchecked_schema]` type.
    pub ty: Option<OwnedNamedType>,
}

/// The description to send with a schema rejection: `None` if it would not fit in a
/// handshake frame (a service with thousands of types), which the client then reports
/// without details rather than failing on an oversized frame.
pub(crate) fn sendable(wire: Vec<WireItem>) -> Option<Vec<WireItem>> {
    let size = postcard::to_stdvec(&wire).map_or(usize::MAX, |bytes| bytes.len());
    // Room for the verdict around it.
    (size <= super::MAX_HANDSHAKE_FRAME as usize - 1024).then_some(wire)
}

/// What differs between this client's description and the daemon's, in words: the first
/// difference found, from the client's point of view ("added" is in the client only).
pub(crate) fn difference(client: &[WireItem], daemon: Option<&[WireItem]>) -> String {
    let Some(daemon) = daemon else {
        return "the daemon's description of its types is too large to compare".to_string();
    };
    let places = |items: &[WireItem]| -> Vec<String> {
        items
            .iter()
            .map(|item| format!("`{}`", item.place))
            .collect()
    };
    let (ours, theirs) = (places(client), places(daemon));
    if ours != theirs {
        let only = |these: &[String], those: &[String]| -> Vec<String> {
            these
                .iter()
                .filter(|place| !those.contains(place))
                .cloned()
                .collect()
        };
        let (added, removed) = (only(&ours, &theirs), only(&theirs, &ours));
        return match (added.is_empty(), removed.is_empty()) {
            (true, true) => "the methods are in another order".to_string(),
            (false, true) => format!("{} added", added.join(", ")),
            (true, false) => format!("{} removed", removed.join(", ")),
            (false, false) => format!("{} added, {} removed", added.join(", "), removed.join(", ")),
        };
    }
    for (ours, theirs) in client.iter().zip(daemon) {
        match (&ours.ty, &theirs.ty) {
            (Some(ours_ty), Some(theirs_ty)) => {
                if let Some(what) = diff_type(ours_ty, theirs_ty) {
                    return format!("{what} (in `{}`)", ours.place);
                }
            }
            (None, None) => {}
            _ => {
                return format!("`{}` is `#[unchecked_schema]` on one side only", ours.place);
            }
        }
    }
    "the methods' signatures as written differ (names, receivers, `async`, or types \
     marked `#[unchecked_schema]`)"
        .to_string()
}

/// The first difference between two structures, naming the innermost type that differs.
fn diff_type(ours: &OwnedNamedType, theirs: &OwnedNamedType) -> Option<String> {
    let name = &ours.name;
    match (&ours.ty, &theirs.ty) {
        (Model::Struct(a), Model::Struct(b)) => diff_fields(name, a, b),
        (Model::Enum(a), Model::Enum(b)) => diff_variants(name, a, b),
        (Model::Option(a), Model::Option(b))
        | (Model::Seq(a), Model::Seq(b))
        | (Model::NewtypeStruct(a), Model::NewtypeStruct(b)) => diff_type(a, b),
        (Model::Tuple(a), Model::Tuple(b)) | (Model::TupleStruct(a), Model::TupleStruct(b)) => {
            diff_list(name, a, b)
        }
        (Model::Map { key: ka, val: va }, Model::Map { key: kb, val: vb }) => {
            diff_type(ka, kb).or_else(|| diff_type(va, vb))
        }
        (a, b) if a == b => None,
        _ => Some(format!(
            "`{name}` is {} here, {} in the daemon",
            kind(&ours.ty),
            kind(&theirs.ty)
        )),
    }
}

fn diff_list(name: &str, ours: &[OwnedNamedType], theirs: &[OwnedNamedType]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!(
            "`{name}` has {} elements here, {} in the daemon",
            ours.len(),
            theirs.len()
        ));
    }
    ours.iter().zip(theirs).find_map(|(a, b)| diff_type(a, b))
}

fn diff_fields(name: &str, ours: &[OwnedNamedValue], theirs: &[OwnedNamedValue]) -> Option<String> {
    let ours_names: Vec<&str> = ours.iter().map(|field| field.name.as_str()).collect();
    let theirs_names: Vec<&str> = theirs.iter().map(|field| field.name.as_str()).collect();
    if let Some(what) = diff_names(name, "field", &ours_names, &theirs_names) {
        return Some(what);
    }
    ours.iter()
        .zip(theirs)
        .find_map(|(a, b)| diff_type(&a.ty, &b.ty))
}

fn diff_variants(
    name: &str,
    ours: &[OwnedNamedVariant],
    theirs: &[OwnedNamedVariant],
) -> Option<String> {
    let ours_names: Vec<&str> = ours.iter().map(|variant| variant.name.as_str()).collect();
    let theirs_names: Vec<&str> = theirs.iter().map(|variant| variant.name.as_str()).collect();
    if let Some(what) = diff_names(name, "variant", &ours_names, &theirs_names) {
        return Some(what);
    }
    ours.iter()
        .zip(theirs)
        .find_map(|(a, b)| match (&a.ty, &b.ty) {
            (VariantModel::StructVariant(x), VariantModel::StructVariant(y)) => {
                diff_fields(&format!("{name}::{}", a.name), x, y)
            }
            (VariantModel::TupleVariant(x), VariantModel::TupleVariant(y)) => {
                diff_list(&format!("{name}::{}", a.name), x, y)
            }
            (VariantModel::NewtypeVariant(x), VariantModel::NewtypeVariant(y)) => diff_type(x, y),
            (x, y) if x == y => None,
            _ => Some(format!(
                "`{name}`: variant `{}` has another kind of fields here than in the daemon",
                a.name
            )),
        })
}

/// Added, removed or reordered names (of fields or variants), the first one found.
fn diff_names(name: &str, what: &str, ours: &[&str], theirs: &[&str]) -> Option<String> {
    let after = |names: &[&str], index: usize| match index {
        0 => "first".to_string(),
        _ => format!("after `{}`", names[index - 1]),
    };
    for (index, item) in ours.iter().enumerate() {
        if !theirs.contains(item) {
            return Some(format!(
                "`{name}`: {what} `{item}` added {}",
                after(ours, index)
            ));
        }
    }
    for (index, item) in theirs.iter().enumerate() {
        if !ours.contains(item) {
            return Some(format!(
                "`{name}`: {what} `{item}` removed (it was {})",
                after(theirs, index)
            ));
        }
    }
    (ours != theirs).then(|| {
        format!(
            "`{name}`: {what}s reordered: {} here, {} in the daemon",
            ours.join(", "),
            theirs.join(", ")
        )
    })
}

/// A structure's kind, in a few words.
fn kind(model: &Model) -> String {
    match model {
        Model::Struct(_) => "a struct".into(),
        Model::Enum(_) => "an enum".into(),
        Model::Option(_) => "an `Option`".into(),
        Model::Seq(_) => "a sequence".into(),
        Model::Map { .. } => "a map".into(),
        Model::Tuple(_) | Model::TupleStruct(_) => "a tuple".into(),
        Model::NewtypeStruct(_) => "a newtype".into(),
        other => format!("`{other:?}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, ty: Model) -> OwnedNamedType {
        OwnedNamedType {
            name: name.into(),
            ty,
        }
    }

    fn quota(fields: &[&str]) -> Vec<WireItem> {
        let fields = fields
            .iter()
            .map(|field| OwnedNamedValue {
                name: (*field).into(),
                ty: named("u32", Model::U32),
            })
            .collect();
        vec![WireItem {
            place: "set(quota)".into(),
            ty: Some(named("Quota", Model::Struct(fields))),
        }]
    }

    #[test]
    fn a_description_too_large_for_the_handshake_is_left_out() {
        let huge: Vec<WireItem> = (0..20_000)
            .map(|index| WireItem {
                place: format!("method_{index}(argument)"),
                ty: None,
            })
            .collect();
        assert_eq!(sendable(huge), None);
        assert!(sendable(quota(&["a"])).is_some());
        assert!(difference(&quota(&["a"]), None).contains("too large"));
    }

    #[test]
    fn names_the_methods_added_or_removed() {
        let mut ours = quota(&["a"]);
        ours[0].place = "set(limit)".into();
        assert_eq!(
            difference(&ours, Some(&quota(&["a"]))),
            "`set(limit)` added, `set(quota)` removed"
        );
    }

    #[test]
    fn names_the_type_and_the_field_that_differs() {
        let said = difference(
            &quota(&["per_window", "burst"]),
            Some(&quota(&["per_window"])),
        );
        assert_eq!(
            said,
            "`Quota`: field `burst` added after `per_window` (in `set(quota)`)"
        );
        let said = difference(
            &quota(&["per_window"]),
            Some(&quota(&["burst", "per_window"])),
        );
        assert!(
            said.contains("field `burst` removed (it was first)"),
            "{said}"
        );
        let said = difference(&quota(&["b", "a"]), Some(&quota(&["a", "b"])));
        assert!(said.contains("fields reordered"), "{said}");
    }
}
