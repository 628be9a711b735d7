//! What `#[local_singleton]` understood of an `impl` block: the model that parsing
//! produces and expansion consumes. Every value here has already been validated.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, ItemImpl, LitStr, Type, Visibility};

/// A service: the annotated `impl` block of one type.
pub struct Service {
    /// The impl block as it is emitted again: the user's code, minus our `#[init]`.
    pub item: ItemImpl,
    /// The implementing type, verbatim (`Counter`, `crate::Counter`).
    pub self_ty: Type,
    /// The last identifier of the type's path, which names the generated items.
    pub ident: Ident,
    /// The singleton name, checked: `#[local_singleton(name = "...")]`, else the default
    /// `<package>.<Type>`. `None` when the package name was unknown at expansion (no
    /// `CARGO_PKG_NAME`): the expansion then asks `env!` for it.
    pub name: Option<LitStr>,
    /// The exposed methods (public, with a `&self` or `&mut self` receiver), in
    /// declaration order: the order fixes the wire's variant indices.
    pub methods: Vec<Method>,
    /// The `#[init]` constructor; `None` constructs the instance with `Default`.
    pub init: Option<Init>,
}

/// An exposed method: one request variant, one dispatcher arm, one client method.
pub struct Method {
    pub ident: Ident,
    pub vis: Visibility,
    pub receiver: Receiver,
    pub args: Vec<Arg>,
    /// The return type; `None` for a method that returns `()` implicitly.
    pub output: Option<Type>,
    /// `#[unchecked_schema]` on the method: its return type's shape is left out of the
    /// fingerprint (only serializability is required).
    pub unchecked_output: bool,
    pub is_async: bool,
    pub attrs: ForwardedAttrs,
}

impl Method {
    /// The name of the method's request variant: `add_all` → `AddAll`. Two methods with
    /// the same variant name are refused (in `parse`).
    pub fn variant_name(&self) -> String {
        pascal_case(&self.ident.unraw().to_string())
    }

    /// `all(p, q)` for a method under `#[cfg(p)] #[cfg(q)]`; `None` for an unconditional
    /// one. Such a method may be compiled out, which shifts the variant indices after it.
    pub fn cfg_predicate(&self) -> Option<TokenStream> {
        if self.attrs.cfgs.is_empty() {
            return None;
        }
        let predicates = self
            .attrs
            .cfgs
            .iter()
            .filter_map(|attr| attr.meta.require_list().ok())
            .map(|list| &list.tokens);
        Some(quote!(all(#(#predicates),*)))
    }
}

/// `add_all` → `AddAll`: a snake-case name in Pascal case.
pub fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars))
        })
        .flatten()
        .collect()
}

/// How a method borrows the instance. Classified once, matched everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// `&self`
    Ref,
    /// `&mut self`
    RefMut,
}

impl Receiver {
    /// The receiver's spelling in the schema fingerprint.
    pub fn canonical(self) -> &'static str {
        match self {
            Receiver::Ref => "&self",
            Receiver::RefMut => "&mut self",
        }
    }
}

/// A named argument of an exposed method or of `#[init]`.
pub struct Arg {
    pub ident: Ident,
    /// The type as written, used where the original signature is repeated (client).
    pub ty: Type,
    pub kind: ArgKind,
    /// `#[unchecked_schema]` on the argument: its type's shape is left out of the
    /// fingerprint (only serializability is required).
    pub unchecked: bool,
}

/// How an argument travels: values as they are, borrows as their owned form.
pub enum ArgKind {
    /// `T`: sent and received as `T`.
    Owned(Type),
    /// `&T` (`&str`, `&[T]`, `&Thing`): the inner type `T`, sent borrowed by the client
    /// and received as `<T as ToOwned>::Owned` by the daemon.
    Borrowed(Type),
}

/// The `#[init]` constructor: its arguments are the daemon's start-up arguments.
pub struct Init {
    pub ident: Ident,
    pub args: Vec<Arg>,
}

/// The attributes of a method that its generated counterparts carry too.
#[derive(Default)]
pub struct ForwardedAttrs {
    /// `#[doc]` (doc comments): copied onto the client method.
    pub docs: Vec<Attribute>,
    /// `#[cfg]`: copied onto the variant, the dispatcher arm and the client method.
    pub cfgs: Vec<Attribute>,
    /// `#[deprecated]`: copied onto the client method.
    pub deprecated: Vec<Attribute>,
}

/// Whether `ty` is `u8`.
fn is_u8(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("u8"))
}

/// Whether `ty` is spelled `Vec<u8>` (or a path ending in it, like `std::vec::Vec<u8>`).
///
/// Byte buffers travel through serde's byte-string methods (`serde_bytes`) instead of
/// element by element: postcard writes both the same way (a length, then the bytes), so
/// the wire is unchanged, but a large buffer is copied in one piece. A type alias of
/// `Vec<u8>` takes the element-wise path: slower, equally correct.
pub fn is_byte_vec(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(generics) = &last.arguments else {
        return false;
    };
    last.ident == "Vec"
        && generics.args.len() == 1
        && matches!(generics.args.first(), Some(syn::GenericArgument::Type(ty)) if is_u8(ty))
}

impl Arg {
    /// The type the argument travels as: verbatim, or `<T as ToOwned>::Owned` for `&T`;
    /// spanned at the user's type so that a trait error points there.
    pub fn wire_type(&self) -> TokenStream {
        match &self.kind {
            ArgKind::Owned(ty) => quote!(#ty),
            ArgKind::Borrowed(inner) => {
                quote_spanned!(inner.span()=> <#inner as ::std::borrow::ToOwned>::Owned)
            }
        }
    }

    /// Whether the argument is a byte buffer (`&[u8]` or `Vec<u8>`): see [`is_byte_vec`].
    pub fn is_bytes(&self) -> bool {
        match &self.kind {
            ArgKind::Borrowed(Type::Slice(slice)) => is_u8(&slice.elem),
            ArgKind::Borrowed(_) => false,
            ArgKind::Owned(ty) => is_byte_vec(ty),
        }
    }
}
