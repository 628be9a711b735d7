//! From tokens to a validated [`Service`]: one function per check, every error spanned
//! at its culprit and collected, so that one expansion reports every misuse at once.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Attribute, Error, FnArg, GenericArgument, Generics, Ident, ImplItem, ImplItemFn, Item,
    ItemImpl, Lifetime, LitStr, Pat, PatIdent, Path, PathArguments, ReturnType, Signature, Token,
    Type, TypeParamBound, TypePath, Visibility,
};

use crate::model::{Arg, ArgKind, ForwardedAttrs, Init, Method, Receiver, Service};

/// Names of the generated client's own items: an exposed method of the same name would
/// collide with them (or with the `Clone`, `Debug` and `From` impls).
const RESERVED_NAMES: &[&str] = &[
    "connect",
    "builder",
    "ping",
    "shutdown",
    "ensure_started",
    "client",
    "from",
    "clone",
    "fmt",
];

/// Longest singleton name, given or default: it names a directory.
const MAX_NAME_LEN: usize = 64;

/// Why the macro refused its input: what to emit instead of the expansion.
pub struct Rejection {
    /// The user's item again (impl blocks without our `#[init]`), so that the rest of the
    /// crate still type-checks and no follow-on error hides the real one.
    original: TokenStream,
    /// Every misuse found, combined.
    error: Error,
}

impl Rejection {
    /// The original item followed by one `compile_error!` per misuse, and nothing else.
    pub fn into_tokens(self) -> TokenStream {
        let mut tokens = self.original;
        tokens.extend(self.error.to_compile_error());
        tokens
    }

    /// The combined error (for tests).
    #[cfg(test)]
    pub fn error(&self) -> &Error {
        &self.error
    }
}

/// Collects errors instead of stopping at the first one.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn check(&mut self, result: syn::Result<()>) {
        if let Err(error) = result {
            self.push(error);
        }
    }

    /// The value of `result`, recording its error if it failed.
    fn take<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn reject(self, original: TokenStream) -> Rejection {
        let error = self.0.unwrap_or_else(|| {
            Error::new(Span::call_site(), "internal: rejected without an error")
        });
        Rejection { original, error }
    }
}

/// Parses and validates `#[local_singleton(attr)] item`.
pub fn service(attr: TokenStream, item: TokenStream) -> Result<Service, Rejection> {
    let mut errors = Errors::default();
    // `None` if the attribute is wrong (already reported), `Some(None)` without `name`.
    let name_arg = errors.take(singleton_name_arg(attr));
    let mut item_impl = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(item_impl)) => item_impl,
        Ok(_) => {
            errors.push(Error::new(
                Span::call_site(),
                "`#[local_singleton]` goes on an inherent impl block (`impl MyType { ... }`): \
                 its `pub` methods with `&self` or `&mut self` become the singleton's calls",
            ));
            return Err(errors.reject(item));
        }
        Err(error) => {
            errors.push(error);
            return Err(errors.reject(TokenStream::new()));
        }
    };
    let init_attrs = take_init_attrs(&mut item_impl, &mut errors);
    let unchecked = take_unchecked_attrs(&mut item_impl, &mut errors);

    errors.check(check_inherent(&item_impl));
    let is_generic = errors
        .take(check_no_generics(&item_impl.generics, IMPL_GENERICS))
        .is_none();
    let ident = errors.take(self_ident(&item_impl.self_ty));
    if !is_generic {
        errors.check(check_concrete_self_ty(&item_impl.self_ty));
    }

    let mut methods = Vec::new();
    let mut init: Option<Init> = None;
    let mut first_init_seen = false;
    for ((item, attrs), unchecked) in item_impl.items.iter().zip(&init_attrs).zip(&unchecked) {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        if let Some(first) = attrs.first() {
            // The second `#[init]` of the block, on this fn or on an earlier one.
            let second = if first_init_seen {
                Some(first)
            } else {
                attrs.get(1)
            };
            if let Some(second) = second {
                errors.push(Error::new_spanned(
                    second,
                    "a second `#[init]`: the daemon constructs its instance one way; \
                     keep `#[init]` on one constructor only",
                ));
            } else {
                init = parse_init(function, ident.as_ref(), unchecked, &mut errors);
            }
            first_init_seen = true;
        } else if is_exposed(function) {
            methods.extend(parse_method(function, unchecked, &mut errors));
        }
    }
    errors.check(check_variant_clashes(&methods));
    let name = match (name_arg, &ident) {
        (Some(None), Some(ident)) => {
            let package = std::env::var("CARGO_PKG_NAME").ok();
            errors
                .take(default_name(package.as_deref(), ident))
                .flatten()
        }
        (name_arg, _) => name_arg.flatten(),
    };

    if !errors.is_empty() {
        return Err(errors.reject(item_impl.into_token_stream()));
    }
    let ident = ident.expect("no error, so the self type has an identifier");
    Ok(Service {
        self_ty: (*item_impl.self_ty).clone(),
        item: item_impl,
        ident,
        name,
        methods,
        init,
    })
}

// ---------------------------------------------------------------------------------------
// The attribute's arguments
// ---------------------------------------------------------------------------------------

/// Parses `name = "..."`, the one argument of the attribute.
fn singleton_name_arg(attr: TokenStream) -> syn::Result<Option<LitStr>> {
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if !meta.path.is_ident("name") {
            return Err(
                meta.error("unknown argument: `#[local_singleton]` accepts only `name = \"...\"`")
            );
        }
        let literal: LitStr = meta.value()?.parse()?;
        if name.is_some() {
            return Err(Error::new_spanned(
                &literal,
                "`name` is given twice: keep one",
            ));
        }
        check_singleton_name(&literal)?;
        name = Some(literal);
        Ok(())
    });
    parser.parse2(attr)?;
    Ok(name)
}

/// Rejects an invalid `name = "..."`, spanned at the literal.
fn check_singleton_name(literal: &LitStr) -> syn::Result<()> {
    let name = literal.value();
    match NameProblems::of(&name) {
        None => Ok(()),
        Some(problems) => Err(Error::new_spanned(
            literal,
            format!(
                "invalid singleton name {name:?}: {problems}; use {} (it names a directory)",
                name_rule()
            ),
        )),
    }
}

/// The rule of a singleton name, as errors state it.
fn name_rule() -> String {
    format!("1 to {MAX_NAME_LEN} characters among `A-Z a-z 0-9 . _ -`, not starting with `.`")
}

/// What makes a string break the singleton-name rule, which is the runtime's own
/// (`validate_name` in `loopback-singleton`'s `runtime_dir.rs`): a name names a
/// directory, so it is `[A-Za-z0-9._-]{1,64}`, not starting with `.`.
struct NameProblems {
    empty: bool,
    leading_dot: bool,
    /// The characters outside `A-Z a-z 0-9 . _ -`, each once, in order.
    chars: Vec<char>,
    /// The length in characters, when over [`MAX_NAME_LEN`]. (The runtime counts bytes,
    /// which are the characters of a name whose characters are all allowed.)
    too_long: Option<usize>,
}

impl NameProblems {
    /// `None` if `name` is a valid singleton name.
    fn of(name: &str) -> Option<Self> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let mut chars = Vec::new();
        for c in name.chars().filter(|&c| !allowed(c)) {
            if !chars.contains(&c) {
                chars.push(c);
            }
        }
        let len = name.chars().count();
        let problems = NameProblems {
            empty: name.is_empty(),
            leading_dot: name.starts_with('.'),
            chars,
            too_long: (len > MAX_NAME_LEN).then_some(len),
        };
        let valid = !problems.empty
            && !problems.leading_dot
            && problems.chars.is_empty()
            && problems.too_long.is_none();
        (!valid).then_some(problems)
    }
}

impl std::fmt::Display for NameProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = Vec::new();
        if self.empty {
            said.push("it is empty".to_owned());
        }
        if self.leading_dot {
            said.push("it starts with `.`".to_owned());
        }
        if !self.chars.is_empty() {
            let chars: Vec<String> = self.chars.iter().map(|c| format!("{c:?}")).collect();
            let verb = if chars.len() == 1 { "is" } else { "are" };
            said.push(format!("{} {verb} not allowed", chars.join(", ")));
        }
        if let Some(len) = self.too_long {
            said.push(format!(
                "it is {len} characters long, over the limit of {MAX_NAME_LEN}"
            ));
        }
        f.write_str(&said.join(" and "))
    }
}

/// The default singleton name, `<package>.<Type>`, as a literal spanned at the type's
/// name: computed here, so that the name checked is the name used. `package` is the
/// `CARGO_PKG_NAME` that cargo gives the compiler; without it (rustc run by something
/// else), `None`: the expansion then leaves the name to `env!`, unchecked.
pub(crate) fn default_name(package: Option<&str>, ident: &Ident) -> syn::Result<Option<LitStr>> {
    let Some(package) = package else {
        return Ok(None);
    };
    let type_name = ident.unraw().to_string();
    let name = format!("{package}.{type_name}");
    let Some(problems) = NameProblems::of(&name) else {
        return Ok(Some(LitStr::new(&name, ident.span())));
    };
    // Renaming the type helps unless a culprit character comes from the package name.
    let rename = if problems.chars.iter().all(|&c| type_name.contains(c)) {
        "rename the type"
    } else {
        "rename the package"
    };
    Err(Error::new(
        ident.span(),
        format!(
            "invalid default singleton name {name:?} (`<crate>.<Type>`): {problems}; \
             set a valid name with `#[local_singleton(name = \"...\")]` \
             ({}; it names a directory), or {rename}",
            name_rule()
        ),
    ))
}

// ---------------------------------------------------------------------------------------
// The impl block
// ---------------------------------------------------------------------------------------

const IMPL_GENERICS: &str = "a `#[local_singleton]` impl can't be generic: the daemon hosts one \
     concrete type; implement it for a concrete type (wrap a generic one in a struct of its own)";

const METHOD_GENERICS: &str = "an exposed method can't be generic: its request and client need \
     concrete types; use concrete types, or make the method private (not `pub`) to keep it local";

fn check_inherent(item: &ItemImpl) -> syn::Result<()> {
    match &item.trait_ {
        Some((_, path, _)) => Err(Error::new_spanned(
            path,
            "`#[local_singleton]` goes on an inherent impl (`impl MyType { ... }`), not on a \
             trait impl: the singleton's calls are the type's own `pub` methods",
        )),
        None => Ok(()),
    }
}

/// Rejects type, const and lifetime parameters and where clauses.
fn check_no_generics(generics: &Generics, message: &str) -> syn::Result<()> {
    if !generics.params.is_empty() {
        return Err(Error::new_spanned(generics, message));
    }
    if let Some(where_clause) = &generics.where_clause {
        return Err(Error::new_spanned(where_clause, message));
    }
    Ok(())
}

/// The identifier naming the generated items: the last segment of the type's path.
fn self_ident(self_ty: &Type) -> syn::Result<Ident> {
    let last = match self_ty {
        Type::Path(TypePath { qself: None, path }) => path.segments.last(),
        _ => None,
    };
    last.map(|segment| segment.ident.clone()).ok_or_else(|| {
        Error::new_spanned(
            self_ty,
            "`#[local_singleton]` needs an impl of a named type (`impl Counter { ... }`)",
        )
    })
}

/// Rejects `impl Wrapper<u8>`: its generated names would clash with other instances'.
fn check_concrete_self_ty(self_ty: &Type) -> syn::Result<()> {
    let Type::Path(TypePath { path, .. }) = self_ty else {
        return Ok(());
    };
    let Some(last) = path.segments.last() else {
        return Ok(());
    };
    if !last.arguments.is_none() {
        return Err(Error::new_spanned(
            &last.arguments,
            "a singleton type can't take generic arguments: define a struct of its own \
             (`struct MyCounter(Wrapper<u8>);`) and put `#[local_singleton]` on its impl",
        ));
    }
    Ok(())
}

/// Removes our `#[init]` helper attributes from the block, returning them per item.
fn take_init_attrs(item: &mut ItemImpl, errors: &mut Errors) -> Vec<Vec<Attribute>> {
    item.items
        .iter_mut()
        .map(|impl_item| {
            let (attrs, on_fn) = match impl_item {
                ImplItem::Fn(function) => (&mut function.attrs, true),
                ImplItem::Const(constant) => (&mut constant.attrs, false),
                ImplItem::Type(ty) => (&mut ty.attrs, false),
                ImplItem::Macro(mac) => (&mut mac.attrs, false),
                _ => return Vec::new(),
            };
            let (init, others) = std::mem::take(attrs).into_iter().partition(is_init_attr);
            *attrs = others;
            for attr in &init {
                errors.check(check_init_attr(attr, on_fn));
            }
            init
        })
        .collect()
}

/// Where `#[unchecked_schema]` marked one fn of the block: its return type (the attribute
/// on the fn) and each typed argument (the attribute on the argument).
#[derive(Default)]
struct Unchecked {
    output: bool,
    args: Vec<bool>,
}

/// Removes our `#[unchecked_schema]` helper attributes from the block's fns and their
/// arguments, returning where they were, per item.
fn take_unchecked_attrs(item: &mut ItemImpl, errors: &mut Errors) -> Vec<Unchecked> {
    let mut take = |attrs: &mut Vec<Attribute>| {
        let (ours, others): (Vec<Attribute>, _) = std::mem::take(attrs)
            .into_iter()
            .partition(|attr| attr.path().is_ident("unchecked_schema"));
        *attrs = others;
        for attr in &ours {
            errors.check(attr.meta.require_path_only().map(drop).map_err(|_| {
                Error::new_spanned(attr, "write `#[unchecked_schema]` without arguments")
            }));
        }
        !ours.is_empty()
    };
    item.items
        .iter_mut()
        .map(|impl_item| {
            let ImplItem::Fn(function) = impl_item else {
                return Unchecked::default();
            };
            let output = take(&mut function.attrs);
            let args = function
                .sig
                .inputs
                .iter_mut()
                .filter_map(|input| match input {
                    FnArg::Typed(typed) => Some(take(&mut typed.attrs)),
                    FnArg::Receiver(_) => None,
                })
                .collect();
            Unchecked { output, args }
        })
        .collect()
}

fn is_init_attr(attr: &Attribute) -> bool {
    attr.path().is_ident("init")
}

fn check_init_attr(attr: &Attribute, on_fn: bool) -> syn::Result<()> {
    if !on_fn {
        return Err(Error::new_spanned(
            attr,
            "`#[init]` marks the constructor fn the daemon builds its instance with",
        ));
    }
    attr.meta
        .require_path_only()
        .map(drop)
        .map_err(|_| Error::new_spanned(attr, "write `#[init]` without arguments"))
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

/// Exposed methods are `pub` (of any kind) and take `self` in some form; the others stay
/// in the impl untouched.
fn is_exposed(function: &ImplItemFn) -> bool {
    !matches!(function.vis, Visibility::Inherited) && function.sig.receiver().is_some()
}

/// Validates an exposed method, recording every error; `None` if any.
///
/// Any error rejects the whole block, so what matters is that each misuse is recorded once.
fn parse_method(
    function: &ImplItemFn,
    unchecked: &Unchecked,
    errors: &mut Errors,
) -> Option<Method> {
    let sig = &function.sig;
    let receiver = errors.take(classify_receiver(sig.receiver()?));
    errors.check(check_name(&sig.ident));
    errors.check(check_safe(sig, "an exposed method"));
    // Past a generics error, the arguments' lifetimes would only repeat it.
    errors.take(check_no_generics(&sig.generics, METHOD_GENERICS))?;
    let args = parse_args(sig, &unchecked.args, errors);
    let output = errors.take(parse_output(&sig.output));
    Some(Method {
        ident: sig.ident.clone(),
        vis: function.vis.clone(),
        receiver: receiver?,
        args: args?,
        output: output?,
        unchecked_output: unchecked.output,
        is_async: sig.asyncness.is_some(),
        attrs: forwarded_attrs(&function.attrs),
    })
}

/// `&self` → [`Receiver::Ref`], `&mut self` → [`Receiver::RefMut`]; anything else moves or
/// wraps the instance, which lives in the daemon.
fn classify_receiver(receiver: &syn::Receiver) -> syn::Result<Receiver> {
    match &*receiver.ty {
        Type::Reference(reference) if is_self_type(&reference.elem) => {
            if let Some(lifetime) = &reference.lifetime {
                return Err(lifetime_error(lifetime));
            }
            return Ok(match reference.mutability {
                Some(_) => Receiver::RefMut,
                None => Receiver::Ref,
            });
        }
        _ => {}
    }
    Err(Error::new_spanned(
        receiver,
        "an exposed method takes `&self` or `&mut self`: the instance lives in the daemon and \
         can't be moved or wrapped; take `&self`/`&mut self`, or make the method private",
    ))
}

fn is_self_type(ty: &Type) -> bool {
    matches!(ty, Type::Path(TypePath { qself: None, path }) if path.is_ident("Self"))
}

/// Rejects names the generated client already uses.
fn check_name(ident: &Ident) -> syn::Result<()> {
    let name = ident.unraw().to_string();
    if RESERVED_NAMES.contains(&name.as_str()) {
        return Err(Error::new_spanned(
            ident,
            format!(
                "`{name}` is a name of the generated client (it has `connect`, `builder`, \
                 `ping`, `shutdown`, `ensure_started`, `client` and the `Clone`/`Debug`/`From` \
                 impls): rename the method"
            ),
        ));
    }
    Ok(())
}

/// Rejects `unsafe` and `extern` functions.
fn check_safe(sig: &Signature, what: &str) -> syn::Result<()> {
    let mut errors = Errors::default();
    if let Some(unsafety) = &sig.unsafety {
        errors.push(Error::new_spanned(
            unsafety,
            format!("{what} can't be `unsafe`: no caller could uphold its contract from another process; make it safe"),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(Error::new_spanned(
            abi,
            format!("{what} can't declare an ABI: remove `extern`"),
        ));
    }
    errors.0.map_or(Ok(()), Err)
}

/// Two methods whose names give the same variant (`add_all` and `addAll`).
fn check_variant_clashes(methods: &[Method]) -> syn::Result<()> {
    let mut errors = Errors::default();
    let mut seen = HashMap::new();
    for method in methods {
        let variant = method.variant_name();
        if let Some(first) = seen.insert(variant.clone(), &method.ident) {
            errors.push(Error::new_spanned(
                &method.ident,
                format!(
                    "`{first}` and `{}` both make the request variant `{variant}`: rename one",
                    method.ident
                ),
            ));
        }
    }
    errors.0.map_or(Ok(()), Err)
}

fn forwarded_attrs(attrs: &[Attribute]) -> ForwardedAttrs {
    let mut forwarded = ForwardedAttrs::default();
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("doc") {
            forwarded.docs.push(attr.clone());
        } else if path.is_ident("cfg") {
            forwarded.cfgs.push(attr.clone());
        } else if path.is_ident("deprecated") {
            forwarded.deprecated.push(attr.clone());
        }
    }
    forwarded
}

// ---------------------------------------------------------------------------------------
// The constructor
// ---------------------------------------------------------------------------------------

/// Validates the `#[init]` constructor, recording every error; `None` if any.
fn parse_init(
    function: &ImplItemFn,
    self_ident: Option<&Ident>,
    unchecked: &Unchecked,
    errors: &mut Errors,
) -> Option<Init> {
    let sig = &function.sig;
    if let Some(receiver) = sig.receiver() {
        errors.push(Error::new_spanned(
            receiver,
            "`#[init]` marks a constructor, which takes no `self`: `fn new(...) -> Self`",
        ));
    }
    if let Some(asyncness) = &sig.asyncness {
        errors.push(Error::new_spanned(
            asyncness,
            "`#[init]` can't be `async`: the daemon constructs its instance before it serves; \
             make it synchronous (do async set-up lazily, in a method)",
        ));
    }
    errors.check(check_safe(sig, "`#[init]`"));
    errors.check(check_no_generics(
        &sig.generics,
        "`#[init]` can't be generic: its arguments travel to the daemon as concrete types",
    ));
    if let Some(self_ident) = self_ident {
        errors.check(check_init_output(sig, self_ident));
    }
    let args = parse_args(sig, &unchecked.args, errors)?;
    Some(Init {
        ident: sig.ident.clone(),
        args,
    })
}

/// `#[init]` returns `Self` (or the type by name), or `Result<Self, E>` for a set-up
/// that can fail: the daemon hosts that value, or reports the error to the client.
fn check_init_output(sig: &Signature, self_ident: &Ident) -> syn::Result<()> {
    const MESSAGE: &str = "`#[init]` must return `Self`, or `Result<Self, E>` with `E: Display` \
         for a set-up that can fail: the daemon hosts the value it returns";
    let is_self = |ty: &Type| is_self_type(ty) || names_type(ty, self_ident);
    match &sig.output {
        ReturnType::Default => Err(Error::new_spanned(sig, MESSAGE)),
        ReturnType::Type(_, ty) if is_self(ty) || result_of(ty).is_some_and(is_self) => Ok(()),
        ReturnType::Type(_, ty) => Err(Error::new_spanned(ty, MESSAGE)),
    }
}

/// `T` of a `Result<T, E>` (any path ending in `Result` with two type arguments).
fn result_of(ty: &Type) -> Option<&Type> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    let syn::PathArguments::AngleBracketed(generics) = &last.arguments else {
        return None;
    };
    let mut types = generics.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let ok = types.next()?;
    (last.ident == "Result" && types.next().is_some() && types.next().is_none()).then_some(ok)
}

/// Whether `ty` is a path ending in `ident` without generic arguments (`Counter`,
/// `crate::Counter`).
fn names_type(ty: &Type, ident: &Ident) -> bool {
    matches!(ty, Type::Path(TypePath { qself: None, path })
        if path.segments.last().is_some_and(|last| last.ident == *ident && last.arguments.is_none()))
}

// ---------------------------------------------------------------------------------------
// Arguments and return types
// ---------------------------------------------------------------------------------------

/// The named arguments after the receiver, recording every error; `None` if any.
/// `unchecked[i]`: whether the `i`th typed argument was marked `#[unchecked_schema]`.
fn parse_args(sig: &Signature, unchecked: &[bool], errors: &mut Errors) -> Option<Vec<Arg>> {
    let mut args = Some(Vec::new());
    let typed = sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(typed) => Some(typed),
        FnArg::Receiver(_) => None,
    });
    for (index, typed) in typed.enumerate() {
        let ident = errors.take(arg_ident(&typed.pat));
        let kind = errors.take(classify_arg_type(&typed.ty));
        match (ident, kind, &mut args) {
            (Some(ident), Some(kind), Some(args)) => args.push(Arg {
                ident,
                ty: (*typed.ty).clone(),
                kind,
                unchecked: unchecked.get(index).copied().unwrap_or(false),
            }),
            _ => args = None,
        }
    }
    args
}

/// An argument is a plain name (`mut` allowed): the request and client name it.
fn arg_ident(pat: &Pat) -> syn::Result<Ident> {
    match pat {
        Pat::Ident(PatIdent {
            by_ref: None,
            subpat: None,
            ident,
            ..
        }) => Ok(ident.clone()),
        _ => Err(Error::new_spanned(
            pat,
            "a pattern can't be an argument here: the generated request and client name each \
             argument; bind a name (`point: Point`) and destructure it in the body",
        )),
    }
}

/// `&T` travels as `T`'s owned form; `&mut T` can't travel; other types as they are.
fn classify_arg_type(ty: &Type) -> syn::Result<ArgKind> {
    match ty {
        Type::Reference(reference) if reference.mutability.is_some() => Err(Error::new_spanned(
            ty,
            "a `&mut` argument can't be exposed: the call runs in the daemon, so changes could \
             not flow back; take `T` or `&T` and return the new value instead",
        )),
        Type::Reference(reference) => {
            if let Some(lifetime) = &reference.lifetime {
                return Err(lifetime_error(lifetime));
            }
            check_wire_type(&reference.elem)?;
            Ok(ArgKind::Borrowed((*reference.elem).clone()))
        }
        Type::Group(group) => classify_arg_type(&group.elem),
        _ => {
            check_wire_type(ty)?;
            Ok(ArgKind::Owned(ty.clone()))
        }
    }
}

/// The return type; `None` when the method returns `()` implicitly.
fn parse_output(output: &ReturnType) -> syn::Result<Option<Type>> {
    match output {
        ReturnType::Default => Ok(None),
        ReturnType::Type(_, ty) => {
            check_wire_type(ty)?;
            Ok(Some((**ty).clone()))
        }
    }
}

/// Rejects what can't cross a process boundary or be named outside the impl: references
/// (other than an argument's outer `&`), lifetimes, `impl Trait` and `Self`.
fn check_wire_type(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(_) => Err(Error::new_spanned(
            ty,
            "a reference can't cross the process boundary here: use the owned type \
             (`String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`); \
             only an argument's outer `&` is allowed",
        )),
        Type::ImplTrait(_) => Err(Error::new_spanned(
            ty,
            "`impl Trait` can't cross the process boundary: name a concrete (serializable) type",
        )),
        Type::Path(path) => check_path_type(path),
        Type::Array(array) => check_wire_type(&array.elem),
        Type::Slice(slice) => check_wire_type(&slice.elem),
        Type::Paren(paren) => check_wire_type(&paren.elem),
        Type::Group(group) => check_wire_type(&group.elem),
        Type::Ptr(pointer) => check_wire_type(&pointer.elem),
        Type::Tuple(tuple) => tuple.elems.iter().try_for_each(check_wire_type),
        Type::TraitObject(object) => check_bounds(&object.bounds),
        Type::BareFn(_) => Err(Error::new_spanned(
            ty,
            "a function pointer can't cross the process boundary: send data, not code",
        )),
        _ => Ok(()),
    }
}

fn check_return_type(output: &ReturnType) -> syn::Result<()> {
    match output {
        ReturnType::Default => Ok(()),
        ReturnType::Type(_, ty) => check_wire_type(ty),
    }
}

fn check_path_type(ty: &TypePath) -> syn::Result<()> {
    if let Some(qself) = &ty.qself {
        check_wire_type(&qself.ty)?;
    } else if ty
        .path
        .segments
        .first()
        .is_some_and(|first| first.ident == "Self")
    {
        return Err(Error::new_spanned(
            ty,
            "`Self` can't be used in an exposed signature: the generated request and client \
             live outside this impl; write the type's name",
        ));
    }
    check_path_arguments(&ty.path)
}

fn check_path_arguments(path: &Path) -> syn::Result<()> {
    for segment in &path.segments {
        match &segment.arguments {
            PathArguments::None => {}
            PathArguments::AngleBracketed(arguments) => {
                for argument in &arguments.args {
                    match argument {
                        GenericArgument::Lifetime(lifetime) => {
                            return Err(lifetime_error(lifetime));
                        }
                        GenericArgument::Type(ty) => check_wire_type(ty)?,
                        GenericArgument::AssocType(assoc) => check_wire_type(&assoc.ty)?,
                        GenericArgument::Constraint(constraint) => {
                            check_bounds(&constraint.bounds)?
                        }
                        _ => {}
                    }
                }
            }
            PathArguments::Parenthesized(arguments) => {
                arguments.inputs.iter().try_for_each(check_wire_type)?;
                check_return_type(&arguments.output)?;
            }
        }
    }
    Ok(())
}

fn check_bounds(bounds: &Punctuated<TypeParamBound, Token![+]>) -> syn::Result<()> {
    for bound in bounds {
        match bound {
            TypeParamBound::Lifetime(lifetime) => return Err(lifetime_error(lifetime)),
            TypeParamBound::Trait(bound) => check_path_arguments(&bound.path)?,
            _ => {}
        }
    }
    Ok(())
}

fn lifetime_error(lifetime: &Lifetime) -> Error {
    let message = if lifetime.ident == "static" {
        "a `'static` borrow can't cross the process boundary: take an owned type instead \
         (`String` rather than `&'static str`)"
            .to_owned()
    } else {
        format!(
            "lifetimes can't cross the process boundary: remove `{lifetime}` \
             (a plain `&T` argument is fine) or use an owned type"
        )
    };
    Error::new_spanned(lifetime, message)
}
