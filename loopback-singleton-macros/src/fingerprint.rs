//! The schema fingerprint: FNV-1a (64 bits) of a canonical description of everything that
//! shapes the wire — the type's name, each exposed method in order (name, receiver,
//! async-ness, argument and return types) and the `#[init]` argument types. Method bodies,
//! argument names and docs leave it unchanged.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;

use crate::model::{Method, Service};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The `SCHEMA` constant's expression.
///
/// A literal, computed here, for the block as written. A method under `#[cfg]` may be
/// compiled out, which shifts the variant indices after it; each such method XORs its own
/// hash into the literal when it is absent, so that two builds with different features
/// never share a fingerprint.
pub fn schema_expr(service: &Service) -> TokenStream {
    let full = fnv1a(canonical(service).as_bytes());
    let absent = service
        .methods
        .iter()
        .enumerate()
        .filter_map(|(index, method)| {
            let predicate = method.cfg_predicate()?;
            let hash = fnv1a(format!("absent {index} {}", canonical_method(method)).as_bytes());
            Some(quote!(^ if ::core::cfg!(#predicate) { 0u64 } else { #hash }))
        });
    quote!(#full #(#absent)*)
}

/// The canonical description hashed into the fingerprint.
pub fn canonical(service: &Service) -> String {
    let mut text = format!("service {};", service.ident.unraw());
    for method in &service.methods {
        text.push_str(&canonical_method(method));
    }
    if let Some(init) = &service.init {
        let types: Vec<String> = init.args.iter().map(|arg| tokens(&arg.ty)).collect();
        text.push_str(&format!("init ({});", types.join(", ")));
    }
    text
}

fn canonical_method(method: &Method) -> String {
    let args: Vec<String> = method.args.iter().map(|arg| tokens(&arg.ty)).collect();
    let output = method
        .output
        .as_ref()
        .map_or_else(|| "()".to_owned(), tokens);
    format!(
        "fn {} {} {} ({}) -> {};",
        method.ident.unraw(),
        method.receiver.canonical(),
        if method.is_async { "async" } else { "sync" },
        args.join(", "),
        output,
    )
}

fn tokens(node: &impl ToTokens) -> String {
    node.to_token_stream().to_string()
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}
