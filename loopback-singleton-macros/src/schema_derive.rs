//! `#[derive(Schema)]`: the structure of a type that crosses the wire, as an impl of
//! `loopback_singleton::Schema` built from `postcard-schema`'s data model (re-exported by
//! `loopback_singleton::__private`, so that a user depends on `loopback-singleton` only).
//! Follows `postcard-derive` 0.2: same description for the same type, `#[serde(rename)]`
//! honoured.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, GenericParam, parse_quote};

/// The `impl Schema`, or the error that prevents it.
pub fn derive(input: DeriveInput) -> syn::Result<TokenStream> {
    let krate = quote!(::loopback_singleton::__private);
    let mut generics = input.generics.clone();
    for param in &mut generics.params {
        if let GenericParam::Type(param) = param {
            param
                .bounds
                .push(parse_quote!(::loopback_singleton::Schema));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let name = renamed(&input.attrs).unwrap_or_else(|| input.ident.to_string());
    let ty = match &input.data {
        Data::Struct(data) => struct_type(&data.fields),
        Data::Enum(data) => {
            let variants = data.variants.iter().map(|variant| {
                let name = renamed(&variant.attrs).unwrap_or_else(|| variant.ident.to_string());
                let ty = variant_type(&variant.fields);
                quote!(&#krate::NamedVariant { name: #name, ty: #ty })
            });
            quote!(&#krate::DataModelType::Enum(&[#(#variants),*]))
        }
        Data::Union(_) => {
            return Err(syn::Error::new(
                input.ident.span(),
                "a union can't derive `Schema`: serde has no data model for it",
            ));
        }
    };
    let ident = &input.ident;
    Ok(quote! {
        impl #impl_generics ::loopback_singleton::Schema for #ident #ty_generics #where_clause {
            const SCHEMA: &'static #krate::NamedType =
                &#krate::NamedType { name: #name, ty: #ty };
        }
    })
}

fn struct_type(fields: &Fields) -> TokenStream {
    let krate = quote!(::loopback_singleton::__private);
    match fields {
        Fields::Named(named) => {
            let fields = named.named.iter().map(field);
            quote!(&#krate::DataModelType::Struct(&[#(#fields),*]))
        }
        Fields::Unnamed(unnamed) if unnamed.unnamed.len() == 1 => {
            let inner = field(&unnamed.unnamed[0]);
            quote!(&#krate::DataModelType::NewtypeStruct(#inner))
        }
        Fields::Unnamed(unnamed) => {
            let fields = unnamed.unnamed.iter().map(field);
            quote!(&#krate::DataModelType::TupleStruct(&[#(#fields),*]))
        }
        Fields::Unit => quote!(&#krate::DataModelType::UnitStruct),
    }
}

fn variant_type(fields: &Fields) -> TokenStream {
    let krate = quote!(::loopback_singleton::__private);
    match fields {
        Fields::Named(named) => {
            let fields = named.named.iter().map(field);
            quote!(&#krate::DataModelVariant::StructVariant(&[#(#fields),*]))
        }
        Fields::Unnamed(unnamed) if unnamed.unnamed.len() == 1 => {
            let inner = field(&unnamed.unnamed[0]);
            quote!(&#krate::DataModelVariant::NewtypeVariant(#inner))
        }
        Fields::Unnamed(unnamed) => {
            let fields = unnamed.unnamed.iter().map(field);
            quote!(&#krate::DataModelVariant::TupleVariant(&[#(#fields),*]))
        }
        Fields::Unit => quote!(&#krate::DataModelVariant::UnitVariant),
    }
}

/// A field's schema, spanned at the field: a field whose type lacks `Schema` is the error.
fn field(field: &syn::Field) -> TokenStream {
    let krate = quote!(::loopback_singleton::__private);
    let ty = &field.ty;
    let schema = quote_spanned!(ty.span()=> <#ty as ::loopback_singleton::Schema>::SCHEMA);
    match &field.ident {
        None => schema,
        Some(ident) => {
            let name = renamed(&field.attrs).unwrap_or_else(|| ident.to_string());
            quote!(&#krate::NamedValue { name: #name, ty: #schema })
        }
    }
}

/// `#[serde(rename = "...")]`, the name serde gives the item (postcard writes no names,
/// but the fingerprint hashes field and variant names).
fn renamed(attrs: &[Attribute]) -> Option<String> {
    let mut rename = None;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        // Other serde arguments are serde's business; a malformed one is reported by it.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Ok(value) = meta.value() {
                    rename = Some(value.parse::<syn::LitStr>()?.value());
                }
            } else if let Ok(value) = meta.value() {
                let _: syn::Expr = value.parse()?;
            }
            Ok(())
        });
    }
    rename
}
