//! `#[derive(Model)]`: a model's metadata (table, columns, relations) as one static.

use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr, Type};

/// The fields every model has, as Medusa's DML adds them.
const REQUIRED: [&str; 4] = ["id", "created_at", "updated_at", "deleted_at"];

/// The column kinds a `kind = "…"` attribute may name.
const KINDS: [(&str, &str); 7] = [
    ("text", "Text"),
    ("integer", "Integer"),
    ("float", "Float"),
    ("boolean", "Boolean"),
    ("decimal", "Decimal"),
    ("timestamp", "Timestamp"),
    ("json", "Json"),
];

struct Relation {
    kind: &'static str,
    target: syn::Path,
    by: LitStr,
}

#[derive(Default)]
struct FieldOptions {
    searchable: bool,
    default: bool,
    skip: bool,
    cascade: bool,
    kind: Option<LitStr>,
    relation: Option<Relation>,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(Model)] takes a struct without generic parameters",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            ident,
            "#[derive(Model)] takes a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            ident,
            "#[derive(Model)] takes a struct with named fields",
        ));
    };

    let type_name = ident.to_string();
    let mut name = snake_case(&type_name);
    let mut table = None;
    let mut plural = None;
    let mut prefix = String::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("model")) {
        attr.parse_nested_meta(|meta| {
            let value = || -> syn::Result<String> { Ok(meta.value()?.parse::<LitStr>()?.value()) };
            if meta.path.is_ident("table") {
                table = Some(value()?);
            } else if meta.path.is_ident("prefix") {
                prefix = value()?;
            } else if meta.path.is_ident("name") {
                name = value()?;
            } else if meta.path.is_ident("plural") {
                plural = Some(value()?);
            } else {
                return Err(
                    meta.error("unknown model attribute; expected table, prefix, name or plural")
                );
            }
            Ok(())
        })?;
    }
    let table = table.unwrap_or_else(|| name.clone());
    let plural = plural.unwrap_or_else(|| pluralize(&name));
    for identifier in [&name, &table, &plural] {
        if !is_identifier(identifier) {
            return Err(syn::Error::new_spanned(
                ident,
                format!("`{identifier}` is not a plain SQL name (letters, digits and _)"),
            ));
        }
    }

    let mut columns = Vec::new();
    let mut relations = Vec::new();
    let mut seen = Vec::new();
    for field in &fields.named {
        let field_ident = field
            .ident
            .as_ref()
            .ok_or_else(|| syn::Error::new(field.span(), "unnamed field"))?;
        let field_name = field_ident.to_string();
        let field_name = field_name.trim_start_matches("r#").to_owned();
        let options = field_options(field)?;
        if options.skip {
            continue;
        }
        if let Some(relation) = options.relation {
            let kind = syn::Ident::new(relation.kind, field.span());
            let target = &relation.target;
            let by = &relation.by;
            if options.cascade && relation.kind == "BelongsTo" {
                return Err(syn::Error::new_spanned(
                    field,
                    "`cascade` applies to has_many and has_one (a child never deletes its parent)",
                ));
            }
            let cascade = options.cascade;
            relations.push(quote! {
                ::gorgon_data::Relation {
                    name: #field_name,
                    kind: ::gorgon_data::RelationKind::#kind,
                    target: <#target as ::gorgon_data::Model>::meta,
                    foreign_key: #by,
                    cascade: #cascade,
                }
            });
            continue;
        }
        if options.cascade {
            return Err(syn::Error::new_spanned(
                field,
                "`cascade` goes with a has_many or has_one relation",
            ));
        }
        let ty = &field.ty;
        let (kind, nullable) = match &options.kind {
            Some(kind) => {
                let Some((_, variant)) = KINDS.iter().find(|(k, _)| *k == kind.value()) else {
                    let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
                    return Err(syn::Error::new_spanned(
                        kind,
                        format!("unknown kind; expected one of {}", known.join(", ")),
                    ));
                };
                let variant = syn::Ident::new(variant, kind.span());
                let nullable = is_option(ty);
                (
                    quote! { ::gorgon_data::Kind::#variant },
                    quote! { #nullable },
                )
            }
            None => (
                quote! { <#ty as ::gorgon_data::ColumnType>::KIND },
                quote! { <#ty as ::gorgon_data::ColumnType>::NULLABLE },
            ),
        };
        let searchable = options.searchable;
        let has_default = options.default;
        columns.push(quote! {
            ::gorgon_data::Column {
                name: #field_name,
                kind: #kind,
                nullable: #nullable,
                has_default: #has_default,
                searchable: #searchable,
            }
        });
        seen.push((field_name, ty.clone()));
    }
    for required in REQUIRED {
        if !seen.iter().any(|(name, _)| name == required) {
            return Err(syn::Error::new_spanned(
                ident,
                format!(
                    "a model has `id: String`, `created_at` and `updated_at: DateTime<Utc>` and \
                     `deleted_at: Option<DateTime<Utc>>`; `{required}` is missing"
                ),
            ));
        }
    }
    if let Some((_, ty)) = seen.iter().find(|(name, _)| name == "deleted_at")
        && !is_option(ty)
    {
        return Err(syn::Error::new_spanned(
            ty,
            "`deleted_at` is an Option (None until soft-deleted)",
        ));
    }

    Ok(quote! {
        impl ::gorgon_data::Model for #ident {
            fn meta() -> &'static ::gorgon_data::ModelMeta {
                static META: ::gorgon_data::ModelMeta = ::gorgon_data::ModelMeta {
                    type_name: #type_name,
                    name: #name,
                    plural: #plural,
                    table: #table,
                    id_prefix: #prefix,
                    columns: &[#(#columns),*],
                    relations: &[#(#relations),*],
                };
                &META
            }
        }
    })
}

fn field_options(field: &syn::Field) -> syn::Result<FieldOptions> {
    let mut options = FieldOptions::default();
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("model")) {
        attr.parse_nested_meta(|meta| {
            let relation = [("has_many", "HasMany"), ("has_one", "HasOne"), ("belongs_to", "BelongsTo")]
                .into_iter()
                .find(|(word, _)| meta.path.is_ident(word));
            if meta.path.is_ident("searchable") {
                options.searchable = true;
            } else if meta.path.is_ident("default") {
                options.default = true;
            } else if meta.path.is_ident("skip") {
                options.skip = true;
            } else if meta.path.is_ident("cascade") {
                options.cascade = true;
            } else if meta.path.is_ident("kind") {
                options.kind = Some(meta.value()?.parse()?);
            } else if let Some((_, kind)) = relation {
                if options.relation.is_some() {
                    return Err(meta.error("a field holds one relation"));
                }
                let mut target = None;
                let mut by = None;
                meta.parse_nested_meta(|inner| {
                    if inner.path.is_ident("by") {
                        by = Some(inner.value()?.parse::<LitStr>()?);
                    } else {
                        target = Some(inner.path.clone());
                    }
                    Ok(())
                })?;
                let target = target.ok_or_else(|| meta.error("name the related model: has_many(Item, by = \"order_id\")"))?;
                let by = by.ok_or_else(|| meta.error("name the foreign key: by = \"order_id\""))?;
                if !is_identifier(&by.value()) {
                    return Err(syn::Error::new_spanned(&by, "the foreign key is a plain SQL name"));
                }
                options.relation = Some(Relation { kind, target, by });
            } else {
                return Err(meta.error(
                    "unknown field attribute; expected searchable, default, skip, kind, cascade, has_many, has_one or belongs_to",
                ));
            }
            Ok(())
        })?;
    }
    Ok(options)
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !text.starts_with(|c: char| c.is_ascii_digit())
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// English plurals for the usual entity names (`category` → `categories`, `shelf` →
/// `shelves`, `address` → `addresses`); `#[model(plural = "…")]` names the others.
/// English plurals for the usual entity names (`category` → `categories`, `shelf` →
/// `shelves`, `address` → `addresses`); `#[model(plural = "…")]` names the others.
fn pluralize(name: &str) -> String {
    if let Some(stem) = name.strip_suffix("lf") {
        return format!("{stem}lves");
    }
    if let Some(stem) = name.strip_suffix("ife") {
        return format!("{stem}ives");
    }
    if let Some(stem) = name.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|end| name.ends_with(end))
    {
        return format!("{name}es");
    }
    format!("{name}s")
}
