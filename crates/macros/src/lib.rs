//! Gorgon's derive macros. Use them through the crates that re-export them
//! (`gorgon_workflows::Inputs`, `gorgon_data::Model`).

mod model;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, parse_macro_input};

/// The most elements a tuple of inputs takes (the SDK implements `Inputs` up to twelve).
const TUPLE_MAX: usize = 12;

/// `#[derive(Model)]` on a serde struct makes it a model of the data layer: its table,
/// columns and relations, checked at compile time (see `gorgon_data::Model`).
///
/// Struct attributes, all optional: `#[model(prefix = "brand", table = "brand", name = "brand",
/// plural = "brands")]`. Field attributes: `searchable` (searched by `q`), `default` (the
/// database fills it when a create leaves it out), `kind = "text" | "integer" | "float" |
/// "boolean" | "decimal" | "timestamp" | "json"` (for a type without its own kind, such as an
/// enum), `skip` (not stored), and one relation: `has_many(Target, by = "fk")`,
/// `has_one(Target, by = "fk")` or `belongs_to(Target, by = "fk")`, with `cascade` to delete,
/// soft-delete and restore the related records with this one.
#[proc_macro_derive(Model, attributes(model))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match model::expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// `#[derive(Inputs)]` on a struct of values (a step's input) makes `<Struct>Handles`, the same
/// fields as handles, which a workflow's composer passes as that step's input: Medusa's object
/// inputs, typed.
///
/// ```ignore
/// #[derive(Clone, Serialize, Deserialize, Inputs)]
/// struct ShipInput { order: Order, address: Address }
/// // in a composer:
/// b.step(&ship, ShipInputHandles { order, address })
/// ```
#[proc_macro_derive(Inputs)]
pub fn derive_inputs(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match inputs(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn inputs(input: &DeriveInput) -> syn::Result<Tokens> {
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(Inputs)] takes a struct without generic parameters",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(Inputs)] takes a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(Inputs)] takes a struct with named fields",
        ));
    };
    let fields: Vec<_> = fields.named.iter().collect();
    if fields.is_empty() {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(Inputs)] needs at least one field (a step without input takes `()`)",
        ));
    }
    if fields.len() > TUPLE_MAX * TUPLE_MAX {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(Inputs)] takes at most 144 fields",
        ));
    }
    let vis = &input.vis;
    let handles = format_ident!("{name}Handles");
    let idents: Vec<_> = fields
        .iter()
        .map(|f| f.ident.clone().expect("named"))
        .collect();
    let declared = fields.iter().map(|f| {
        let (ident, ty, field_vis) = (&f.ident, &f.ty, &f.vis);
        let doc = format!(
            "The handle of `{}`.",
            ident.as_ref().map(ToString::to_string).unwrap_or_default()
        );
        quote! { #[doc = #doc] #field_vis #ident: ::gorgon_workflows::Handle<#ty> }
    });
    // The fields as nested tuples of at most twelve (the SDK's largest tuple of inputs).
    let chunks: Vec<&[syn::Ident]> = idents.chunks(TUPLE_MAX).collect();
    let (handle_tuple, value_pattern) = if chunks.len() == 1 {
        (quote! { (#(self.#idents,)*) }, quote! { (#(#idents,)*) })
    } else {
        let handle_chunks = chunks.iter().map(|c| quote! { (#(self.#c,)*) });
        let value_chunks = chunks.iter().map(|c| quote! { (#(#c,)*) });
        (
            quote! { (#(#handle_chunks,)*) },
            quote! { (#(#value_chunks,)*) },
        )
    };
    let doc = format!(
        "The fields of [`{name}`] as handles: a workflow's composer passes this as the input of a \
         step taking a `{name}` (made by `#[derive(Inputs)]`)."
    );
    Ok(quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug)]
        #vis struct #handles {
            #(#declared,)*
        }

        impl ::gorgon_workflows::Inputs for #handles {
            type Values = #name;
            fn source(
                self,
                builder: &::gorgon_workflows::Builder,
                user: &str,
            ) -> ::core::result::Result<::gorgon_workflows::Source<#name>, ::gorgon_workflows::Error> {
                let source = ::gorgon_workflows::Inputs::source(#handle_tuple, builder, user)?;
                ::core::result::Result::Ok(source.map(|#value_pattern| #name { #(#idents,)* }))
            }
        }
    })
}
