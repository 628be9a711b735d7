//! The schema fingerprint: FNV-1a (64 bits) of a canonical description of everything that
//! shapes the wire — the type's name, each exposed method in order (name, receiver,
//! async-ness, argument and return types) and the `#[init]` argument types. Method bodies,
//! argument names and docs leave it unchanged — folded, at compile time, with the shape of
//! every type that crosses the wire (`__private::wire_of`: field and variant names and
//! order, primitive kinds, sequences, maps, options, recursively), so that a type changing
//! shape between two builds changes the fingerprint too.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
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
    let acc = Ident::new("__ls_fingerprint", Span::call_site());
    let self_ty = &service.self_ty;
    let folds = wire_types(service).into_iter().filter_map(|wire| {
        let WireType { cfgs, konst, .. } = wire;
        let konst = konst?;
        Some(quote! {
            #(#cfgs)*
            let #acc = ::loopback_singleton::__private::fold_shape(#acc, <#self_ty>::#konst.0);
        })
    });
    quote! {{
        let #acc: u64 = #full #(#absent)*;
        #(#folds)*
        #acc
    }}
}

/// One type that crosses the wire, where it crosses it.
pub struct WireType<'a> {
    /// `method(argument)`, `method ->` or `#[init](argument)`.
    pub place: String,
    /// The type as it travels (owned), spanned at the user's type.
    pub ty: TokenStream,
    /// The `#[cfg]` of its method.
    pub cfgs: &'a [syn::Attribute],
    /// The hidden associated const (`__LS_WIRE_<n>`) holding its shape and structure;
    /// `None` for a type marked `#[unchecked_schema]`.
    pub konst: Option<Ident>,
}

/// Every type that crosses the wire, in order: each method's arguments and return type
/// (methods in declaration order), then the `#[init]` arguments.
pub fn wire_types(service: &Service) -> Vec<WireType<'_>> {
    let mut types = Vec::new();
    let mut next = 0usize;
    let mut konst = |unchecked: bool| {
        (!unchecked).then(|| {
            next += 1;
            format_ident!("__LS_WIRE_{}", next - 1)
        })
    };
    for method in &service.methods {
        let name = method.ident.unraw();
        for arg in &method.args {
            types.push(WireType {
                place: format!("{name}({})", arg.ident.unraw()),
                ty: arg.wire_type(),
                cfgs: &method.attrs.cfgs,
                konst: konst(arg.unchecked),
            });
        }
        if let Some(output) = &method.output {
            types.push(WireType {
                place: format!("{name} ->"),
                ty: quote_spanned!(output.span()=> #output),
                cfgs: &method.attrs.cfgs,
                konst: konst(method.unchecked_output),
            });
        }
    }
    for arg in service.init.iter().flat_map(|init| &init.args) {
        types.push(WireType {
            place: format!("#[init]({})", arg.ident.unraw()),
            ty: arg.wire_type(),
            cfgs: &[],
            konst: konst(arg.unchecked),
        });
    }
    types
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
