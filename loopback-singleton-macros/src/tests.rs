//! Parsing, validation, fingerprint and expansion, tested on token streams.

use proc_macro2::TokenStream;
use quote::quote;

use crate::model::{ArgKind, Receiver, Service};
use crate::{expand, fingerprint, model, parse};

fn parse_ok(attr: TokenStream, item: TokenStream) -> Service {
    match parse::service(attr, item) {
        Ok(service) => service,
        Err(rejection) => panic!("rejected: {}", rejection.error()),
    }
}

/// The messages of every error the macro reports for `item`.
fn errors(attr: TokenStream, item: TokenStream) -> Vec<String> {
    match parse::service(attr, item) {
        Ok(_) => panic!("accepted"),
        Err(rejection) => rejection
            .error()
            .clone()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

/// The one error `item` gets; fails if there are none or several (a cascade).
fn single_error(item: TokenStream) -> String {
    let errors = errors(TokenStream::new(), item);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap()
}

fn counter() -> TokenStream {
    quote! {
        impl Counter {
            const ZERO: u64 = 0;
            #[init]
            pub fn new(start: u64, step: &str) -> Self { todo!() }
            /// Increments.
            pub fn inc(&mut self) -> u64 { 1 }
            pub fn get(&self) -> u64 { 2 }
            pub fn add_all(&mut self, xs: &[u64]) -> u64 { 3 }
            pub(crate) fn greet(&self, mut who: &str) -> String { todo!() }
            pub async fn slow(&self, v: &Thing) -> Result<u64, MyErr> { todo!() }
            fn helper(&self) {}
            pub fn assoc() -> u8 { 1 }
        }
    }
}

#[test]
fn exposes_public_methods_with_a_receiver() {
    let service = parse_ok(TokenStream::new(), counter());
    let names: Vec<String> = service
        .methods
        .iter()
        .map(|m| m.ident.to_string())
        .collect();
    assert_eq!(names, ["inc", "get", "add_all", "greet", "slow"]);
    assert_eq!(service.ident, "Counter");
    assert_eq!(service.methods[0].receiver, Receiver::RefMut);
    assert_eq!(service.methods[1].receiver, Receiver::Ref);
    assert!(service.methods[4].is_async);
    assert_eq!(service.methods[0].attrs.docs.len(), 1);
    let init = service.init.expect("an #[init]");
    assert_eq!(init.ident, "new");
    assert!(matches!(init.args[0].kind, ArgKind::Owned(_)));
    assert!(matches!(init.args[1].kind, ArgKind::Borrowed(_)));
}

#[test]
fn borrowed_arguments_keep_their_inner_type() {
    let service = parse_ok(TokenStream::new(), counter());
    let ArgKind::Borrowed(inner) = &service.methods[2].args[0].kind else {
        panic!("not borrowed")
    };
    assert_eq!(quote!(#inner).to_string(), "[u64]");
}

#[test]
fn the_emitted_impl_loses_init_only() {
    let service = parse_ok(TokenStream::new(), counter());
    let item = &service.item;
    let text = quote!(#item).to_string();
    assert!(!text.contains("# [init]"), "{text}");
    assert!(text.contains("const ZERO"));
    assert!(text.contains("fn helper"));
}

#[test]
fn a_rejection_emits_the_impl_and_errors_only() {
    let rejection = match parse::service(
        TokenStream::new(),
        quote! {
            impl Counter {
                #[init]
                pub fn new() -> Self { todo!() }
                pub fn take(self) {}
            }
        },
    ) {
        Ok(_) => panic!("accepted"),
        Err(rejection) => rejection,
    };
    let text = rejection.into_tokens().to_string();
    assert!(text.contains("impl Counter"));
    assert!(!text.contains("# [init]"));
    assert!(text.contains("compile_error"));
    assert!(!text.contains("CounterClient"));
    assert!(!text.contains("CounterRequest"));
}

#[test]
fn expansion_names_and_indices() {
    let service = parse_ok(
        quote!(name = "my-counter"),
        quote! {
            impl Counter {
                pub fn inc(&mut self) -> u64 { 1 }
                #[cfg(feature = "x")]
                pub fn maybe(&self) {}
                pub fn add_all(&mut self, xs: &[u64]) -> u64 { 3 }
            }
        },
    );
    let text = expand::service(&service).to_string();
    for expected in [
        "pub enum CounterRequest",
        "AddAll { xs : < [u64] as :: std :: borrow :: ToOwned > :: Owned }",
        "pub struct CounterClient",
        "const NAME : & 'static str = \"my-counter\"",
        "self . inner . call (0u32 , & ())",
        "self . inner . call (1u32 + (:: core :: cfg ! (all (feature = \"x\")) as u32) , & (xs ,))",
        "< Counter as :: core :: default :: Default > :: default ()",
        "CounterRequest :: AddAll { xs : __ls_arg0 } => :: loopback_singleton :: Dispatch :: ready (& < Counter > :: add_all (self , & __ls_arg0) , __ls_out)",
        "Dispatch :: ready (& < Counter > :: inc (self) , __ls_out)",
        "pub fn inc (& self) ->",
        "daemon_hook :: < Counter >",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn expansion_of_init_and_async() {
    let text = expand::service(&parse_ok(TokenStream::new(), counter())).to_string();
    for expected in [
        "type Init = (u64 , < str as :: std :: borrow :: ToOwned > :: Owned)",
        "let (__ls_arg0 , __ls_arg1) = __ls_init ; :: loopback_singleton :: __private :: IntoInstance :: into_instance (< Counter > :: new (__ls_arg0 , & __ls_arg1))",
        "pub fn connect (start : u64 , step : & str)",
        "Self :: builder () . connect ((start , :: std :: borrow :: ToOwned :: to_owned (step)))",
        "Dispatch :: pending (async move { let __ls_value = < Counter > :: slow (self , & __ls_arg0) . await ;",
        "pub (crate) fn greet (& self , who : & str)",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn the_default_name_is_computed_at_expansion() {
    let text = expand::service(&parse_ok(TokenStream::new(), counter())).to_string();
    // Cargo sets `CARGO_PKG_NAME` when it runs tests too; without it, the expansion
    // leaves the name to `env!`.
    let expected = match std::env::var("CARGO_PKG_NAME") {
        Ok(package) => format!("const NAME : & 'static str = \"{package}.Counter\""),
        Err(_) => "const NAME : & 'static str = :: core :: concat ! (:: core :: env ! (\"CARGO_PKG_NAME\") , \".\" , \"Counter\")".to_owned(),
    };
    assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
}

// ---------------------------------------------------------------------------------------
// Misuse: one error each, saying what to do
// ---------------------------------------------------------------------------------------

#[test]
fn rejects_generic_impls_and_methods() {
    assert!(
        single_error(quote!(
            impl<T> Counter<T> {}
        ))
        .contains("can't be generic")
    );
    assert!(single_error(quote!(impl Counter where u8: Copy {})).contains("can't be generic"));
    assert!(
        single_error(quote!(impl Counter { pub fn f<T>(&self, t: T) {} }))
            .contains("can't be generic")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f<'a>(&self, t: &'a str) {} }))
            .contains("can't be generic")
    );
    assert!(single_error(quote!(impl Wrapper<u8> {})).contains("generic arguments"));
}

#[test]
fn rejects_lifetimes() {
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, s: Foo<'a>) {} }))
            .contains("remove `'a`")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, s: &'static str) {} }))
            .contains("String")
    );
    assert!(single_error(quote!(impl Counter { pub fn f(&'a self) {} })).contains("lifetimes"));
}

#[test]
fn rejects_receivers_that_move_the_instance() {
    assert!(
        single_error(quote!(impl Counter { pub fn f(self) {} })).contains("`&self` or `&mut self`")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(self: Box<Self>) {} }))
            .contains("`&self` or `&mut self`")
    );
    // Private or receiver-less methods aren't exposed, so anything goes.
    parse_ok(
        TokenStream::new(),
        quote!(impl Counter { fn f(self) {} pub fn g<T>(t: T) {} }),
    );
}

#[test]
fn rejects_unsupported_arguments() {
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, (a, b): (u32, u32)) {} }))
            .contains("pattern")
    );
    assert!(single_error(quote!(impl Counter { pub fn f(&self, _: u8) {} })).contains("pattern"));
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, x: &mut Vec<u8>) {} }))
            .contains("`&mut`")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, x: impl Into<u8>) {} }))
            .contains("impl Trait")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self) -> impl Copy { 1 } }))
            .contains("impl Trait")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, x: Vec<&str>) {} }))
            .contains("reference")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self) -> &str { "" } })).contains("reference")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self) -> Self { todo!() } }))
            .contains("`Self`")
    );
    assert!(
        single_error(quote!(impl Counter { pub fn f(&self, x: Option<Self>) {} }))
            .contains("`Self`")
    );
}

#[test]
fn rejects_unsafe_and_extern() {
    assert!(single_error(quote!(impl Counter { pub unsafe fn f(&self) {} })).contains("`unsafe`"));
    assert!(
        single_error(quote!(impl Counter { pub extern "C" fn f(&self) {} })).contains("extern")
    );
}

#[test]
fn rejects_init_misuse() {
    let two = single_error(quote!(impl Counter {
        #[init] fn a() -> Self { todo!() }
        #[init] fn b() -> Self { todo!() }
    }));
    assert!(two.contains("second `#[init]`"));
    assert!(
        single_error(quote!(impl Counter { #[init] pub fn a(&self) -> Self { todo!() } }))
            .contains("no `self`")
    );
    assert!(
        single_error(quote!(impl Counter { #[init] fn a() -> Option<Self> { todo!() } }))
            .contains("return `Self`")
    );
    assert!(single_error(quote!(impl Counter { #[init] fn a() {} })).contains("return `Self`"));
    assert!(
        single_error(quote!(impl Counter { #[init] async fn a() -> Self { todo!() } }))
            .contains("`async`")
    );
    assert!(
        single_error(quote!(impl Counter { #[init] fn a(x: &mut u8) -> Self { todo!() } }))
            .contains("`&mut`")
    );
    assert!(
        single_error(quote!(impl Counter { #[init(x)] fn a() -> Self { todo!() } }))
            .contains("without arguments")
    );
    parse_ok(
        TokenStream::new(),
        quote!(impl Counter { #[init] fn a() -> Counter { todo!() } }),
    );
    parse_ok(
        TokenStream::new(),
        quote!(impl Counter { #[init] fn a() -> crate::Counter { todo!() } }),
    );
    parse_ok(
        TokenStream::new(),
        quote!(impl Counter { #[init] fn a() -> Result<Self, String> { todo!() } }),
    );
    assert!(
        single_error(quote!(impl Counter { #[init] fn a() -> Result<u8, String> { todo!() } }))
            .contains("return `Self`")
    );
}

#[test]
fn rejects_names_of_the_generated_client() {
    for name in [
        "connect",
        "builder",
        "ping",
        "shutdown",
        "ensure_started",
        "client",
        "from",
        "clone",
        "fmt",
    ] {
        let ident = proc_macro2::Ident::new(name, proc_macro2::Span::call_site());
        assert!(
            single_error(quote!(impl Counter { pub fn #ident(&self) {} }))
                .contains("rename the method")
        );
    }
    assert!(
        single_error(quote!(impl Counter { pub fn add_all(&self) {} pub fn addAll(&self) {} }))
            .contains("AddAll")
    );
}

#[test]
fn checks_the_attribute() {
    parse_ok(quote!(name = "my.counter-2_x"), quote!(impl Counter {}));
    for bad in [
        quote!(name = ".hidden"),
        quote!(name = ""),
        quote!(name = "a/b"),
        quote!(name = "é"),
    ] {
        assert!(errors(bad, quote!(impl Counter {}))[0].contains("invalid singleton name"));
    }
    let long = "a".repeat(65);
    assert!(
        errors(quote!(name = #long), quote!(impl Counter {}))[0].contains("invalid singleton name")
    );
    // The message says what is wrong.
    let said = |name: &str| errors(quote!(name = #name), quote!(impl Counter {})).remove(0);
    assert!(said("").contains("it is empty"), "{}", said(""));
    assert!(said(".x").contains("starts with `.`"), "{}", said(".x"));
    assert!(
        said("a/b").contains("'/' is not allowed"),
        "{}",
        said("a/b")
    );
    assert!(
        said("a b/c").contains("' ', '/' are not allowed"),
        "{}",
        said("a b/c")
    );
    assert!(
        said(&long).contains("65 characters long"),
        "{}",
        said(&long)
    );
    let longest = &long[1..];
    parse_ok(quote!(name = #longest), quote!(impl Counter {}));
    assert!(errors(quote!(other = "x"), quote!(impl Counter {}))[0].contains("only `name"));
    assert!(errors(quote!(name = 5), quote!(impl Counter {}))[0].contains("string literal"));
}

#[test]
fn checks_the_default_name() {
    let ident = |name: &str| proc_macro2::Ident::new(name, proc_macro2::Span::call_site());
    let name = |package, ty: &str| {
        parse::default_name(package, &ident(ty)).map(|name| name.map(|name| name.value()))
    };
    let message = |package, ty: &str| name(package, ty).unwrap_err().to_string();
    assert_eq!(
        name(Some("my-crate"), "Counter").unwrap().unwrap(),
        "my-crate.Counter"
    );
    let raw = proc_macro2::Ident::new_raw("Counter", proc_macro2::Span::call_site());
    let raw = parse::default_name(Some("my-crate"), &raw)
        .unwrap()
        .unwrap();
    assert_eq!(raw.value(), "my-crate.Counter");
    assert_eq!(name(None, "Counter").unwrap(), None);
    // `my-crate.` is 9 characters: 55 more make 64, the limit.
    assert!(name(Some("my-crate"), &"T".repeat(55)).is_ok());
    let long = message(Some("my-crate"), &"T".repeat(56));
    assert!(long.contains("invalid default singleton name"), "{long}");
    assert!(
        long.contains("65 characters long, over the limit of 64"),
        "{long}"
    );
    assert!(
        long.contains("`#[local_singleton(name = \"...\")]`"),
        "{long}"
    );
    assert!(long.ends_with("or rename the type"), "{long}");
    let umlaut = message(Some("my-crate"), "Zähler");
    assert!(umlaut.contains("\"my-crate.Zähler\""), "{umlaut}");
    assert!(umlaut.contains("'ä' is not allowed"), "{umlaut}");
    assert!(umlaut.ends_with("or rename the type"), "{umlaut}");
    let package = message(Some("zähler"), "Counter");
    assert!(package.ends_with("or rename the package"), "{package}");
}

#[test]
fn an_invalid_default_name_is_one_error() {
    // The package name is unknown outside cargo: then nothing is checked.
    if std::env::var("CARGO_PKG_NAME").is_ok() {
        let error = single_error(quote!(impl Zähler { pub fn get(&self) -> u8 { 0 } }));
        assert!(error.contains("'ä' is not allowed"), "{error}");
    }
    // A given name replaces the default, even an invalid one: one error, about it.
    parse_ok(quote!(name = "zaehler"), quote!(impl Zähler {}));
    let errors = errors(quote!(name = "a/b"), quote!(impl Zähler {}));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("invalid singleton name \"a/b\""),
        "{errors:#?}"
    );
}

#[test]
fn rejects_other_items() {
    assert!(
        single_error(quote!(
            fn f() {}
        ))
        .contains("inherent impl")
    );
    assert!(single_error(quote!(impl Trait for Counter {})).contains("not on a trait impl"));
}

#[test]
fn reports_every_misuse_at_once() {
    let errors = errors(
        TokenStream::new(),
        quote!(impl Counter {
            pub fn a(self) {}
            pub fn b(&self, x: &mut u8) {}
            pub fn connect(&self) {}
        }),
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

// ---------------------------------------------------------------------------------------
// Fingerprint
// ---------------------------------------------------------------------------------------

fn schema(item: TokenStream) -> String {
    fingerprint::schema_expr(&parse_ok(TokenStream::new(), item)).to_string()
}

#[test]
fn fingerprint_follows_the_wire_and_nothing_else() {
    let base = schema(quote!(impl Counter { pub fn add(&mut self, x: u64) -> u64 { x } }));
    let body = schema(quote!(impl Counter { pub fn add(&mut self, x: u64) -> u64 { x + 1 } }));
    let arg_name = schema(quote!(impl Counter { pub fn add(&mut self, y: u64) -> u64 { y } }));
    let private =
        schema(quote!(impl Counter { pub fn add(&mut self, x: u64) -> u64 { x } fn p(&self) {} }));
    assert_eq!(base, body);
    assert_eq!(base, arg_name);
    assert_eq!(base, private);
    for changed in [
        quote!(impl Counter { pub fn add(&mut self, x: u32) -> u64 { x } }),
        quote!(impl Counter { pub fn add(&mut self, x: u64) -> u32 { x } }),
        quote!(impl Counter { pub fn add(&self, x: u64) -> u64 { x } }),
        quote!(impl Counter { pub async fn add(&mut self, x: u64) -> u64 { x } }),
        quote!(impl Counter { pub fn plus(&mut self, x: u64) -> u64 { x } }),
        quote!(impl Other { pub fn add(&mut self, x: u64) -> u64 { x } }),
        quote!(impl Counter { #[init] fn new(a: u8) -> Self { todo!() } pub fn add(&mut self, x: u64) -> u64 { x } }),
    ] {
        assert_ne!(base, schema(changed));
    }
}

#[test]
fn fingerprint_follows_method_order() {
    let ab = schema(quote!(impl C { pub fn a(&self) {} pub fn b(&self) {} }));
    let ba = schema(quote!(impl C { pub fn b(&self) {} pub fn a(&self) {} }));
    assert_ne!(ab, ba);
}

#[test]
fn fingerprint_of_a_cfg_method_depends_on_the_cfg() {
    let text = schema(quote!(impl C { #[cfg(unix)] pub fn a(&self) {} }));
    assert!(text.contains(":: core :: cfg ! (all (unix))"), "{text}");
}

#[test]
fn fnv1a_matches_the_reference_values() {
    assert_eq!(fingerprint::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fingerprint::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fingerprint::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn pascal_case_of_method_names() {
    assert_eq!(model::pascal_case("add_all"), "AddAll");
    assert_eq!(model::pascal_case("inc"), "Inc");
    assert_eq!(model::pascal_case("get_2x"), "Get2x");
    assert_eq!(model::pascal_case("_private__x"), "PrivateX");
}

// ---------------------------------------------------------------------------------------
// Type shapes and #[unchecked_schema]
// ---------------------------------------------------------------------------------------

#[test]
fn the_fingerprint_folds_the_shape_of_each_checked_type_under_its_cfg() {
    let text = schema(quote! {
        impl C {
            #[init] fn new(a: Limits) -> Self { todo!() }
            pub fn set(&mut self, q: Quota, #[unchecked_schema] f: Foreign) -> u64 { 1 }
            #[cfg(unix)] pub fn mode(&self) -> Mode { todo!() }
        }
    });
    // `q`, `set ->`, `mode ->`, `new(a)`: four consts; `f` is left out.
    for konst in ["__LS_WIRE_0", "__LS_WIRE_1", "__LS_WIRE_2", "__LS_WIRE_3"] {
        assert!(text.contains(&format!("{konst} . 0")), "{konst} in {text}");
    }
    assert!(!text.contains("__LS_WIRE_4"), "{text}");
    assert!(
        text.contains("# [cfg (unix)] let __ls_fingerprint"),
        "{text}"
    );
}

#[test]
fn unchecked_schema_marks_arguments_and_returns_and_leaves_the_impl() {
    let service = parse_ok(
        TokenStream::new(),
        quote! {
            impl C {
                #[init] fn new(#[unchecked_schema] a: Foreign) -> Self { todo!() }
                #[unchecked_schema]
                pub fn get(&self, b: u8, #[unchecked_schema] c: &Foreign) -> Foreign { todo!() }
                pub fn put(&mut self, d: u8) -> u8 { d }
            }
        },
    );
    let flags: Vec<bool> = service.methods[0]
        .args
        .iter()
        .map(|a| a.unchecked)
        .collect();
    assert_eq!(flags, [false, true]);
    assert!(service.methods[0].unchecked_output);
    assert!(!service.methods[1].unchecked_output);
    assert!(!service.methods[1].args[0].unchecked);
    assert!(service.init.as_ref().unwrap().args[0].unchecked);
    let item = &service.item;
    let text = quote!(#item).to_string();
    assert!(!text.contains("unchecked_schema"), "{text}");
}

#[test]
fn unchecked_schema_takes_no_arguments() {
    let message = single_error(quote! {
        impl C { #[unchecked_schema(yes)] pub fn get(&self) -> u8 { 1 } }
    });
    assert!(message.contains("without arguments"), "{message}");
}
