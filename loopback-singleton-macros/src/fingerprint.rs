//! The schema fingerprint: FNV-1a (64 bits) of a canonical description of everything that
//! shapes the wire — the type's name, each exposed method in order (name, receiver,
//! async-ness, argument and return types) and the `#[init]` argument types. Method bodies,
//! argument names and docs leave it unchanged — folded, at compile time, with the shape of
//! every type that crosses the wire (`__private::shape`: field and variant names and
//! order, primitive kinds, sequences, maps, options, recursively), so that a type changing
//! shape between two builds changes the fingerprint too.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

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
    let shapes = service.methods.iter().flat_map(|method| {
        let cfgs = &method.attrs.cfgs;
        let args = method
            .args
            .iter()
            .filter(|arg| !arg.unchecked)
            .map(|arg| (arg.ty.span(), arg.wire_type()));
        let output = method
            .output
            .as_ref()
            .filter(|_| !method.unchecked_output)
            .map(|ty| (ty.span(), quote!(#ty)));
        args.chain(output)
            .map(move |(span, ty)| fold(span, ty, cfgs))
    });
    let init = service.init.iter().flat_map(|init| &init.args);
    let init = init
        .filter(|arg| !arg.unchecked)
        .map(|arg| fold(arg.ty.span(), arg.wire_type(), &[]));
    quote! {{
        let __ls_fingerprint: u64 = #full #(#absent)*;
        #(#shapes)*
        #(#init)*
        __ls_fingerprint
    }}
}

/// Folds the shape of one type (see `__private::shape`) into the fingerprint, if
/// its method is compiled in; spanned at the type: a type without `Schema` is reported here, once.
fn fold(span: Span, ty: TokenStream, cfgs: &[syn::Attribute]) -> TokenStream {
    // The accumulator is named at the call site, whatever the type's span.
    let acc = proc_macro2::Ident::new("__ls_fingerprint", Span::call_site());
    let shape = quote_spanned!(span=> ::loopback_singleton::__private::shape::<#ty>());
    quote! {
        #(#cfgs)*
        let #acc = ::loopback_singleton::__private::fold_shape(#acc, #shape);
    }
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
