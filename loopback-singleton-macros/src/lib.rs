//! The `#[local_singleton]` attribute of
//! [`loopback-singleton`](https://docs.rs/loopback-singleton): use it through that crate,
//! which documents it and provides the runtime its expansion calls.
//!
//! The macro parses the annotated impl block into a `model::Service` (validating it on
//! the way, in `parse`), then expands the model (in `expand`).
//!
//! The modules, bottom-up; each imports only those above it in this list:
//! - `model`: what the macro understood of the block, and the facts derived from it alone
//!   (a method's variant name, its `#[cfg]` predicate). Imports nothing of the crate.
//! - `parse`: tokens → a validated model, or every misuse found.
//! - `fingerprint`: model → the schema fingerprint.
//! - `expand`: model → the generated items (the fingerprint among them).
//!
//! `schema_derive` stands apart: `#[derive(Schema)]` for the types that cross the wire.

mod expand;
mod fingerprint;
mod model;
mod parse;
mod schema_derive;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Turns an inherent impl block into a loopback singleton: its `pub` methods taking `&self`
/// or `&mut self` become calls of a typed client (`<Type>Client`) to one instance hosted by
/// a per-user daemon. See the `loopback-singleton` crate for the full documentation.
///
/// On misuse, emits the impl block as written plus one error per misuse, and nothing else.
#[proc_macro_attribute]
pub fn local_singleton(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::service(attr.into(), item.into()) {
        Ok(service) => expand::service(&service),
        Err(rejection) => rejection.into_tokens(),
    }
    .into()
}

/// Derives `loopback_singleton::Schema`: the structure of a type that crosses the wire
/// (field and variant names and order, and the structure of each field's type), which the
/// schema fingerprint of every service using the type covers.
#[proc_macro_derive(Schema, attributes(serde))]
pub fn derive_schema(item: TokenStream) -> TokenStream {
    match syn::parse::<syn::DeriveInput>(item) {
        Ok(input) => schema_derive::derive(input).unwrap_or_else(syn::Error::into_compile_error),
        Err(error) => error.into_compile_error(),
    }
    .into()
}
