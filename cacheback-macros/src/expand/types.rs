//! Searches inside a type, shared by the checks of parameters, dependencies and the return type.
//!
//! The walk is written by hand rather than with syn's `visit` (which the macro does not enable:
//! it keeps to syn's `full` feature). It also goes only where a hand-written walk goes: into
//! arrays, groups, parentheses, pointers, references, slices, tuples and the type arguments of a
//! path, not into trait bounds, fn pointers or qualified paths, so `Box<dyn Fn(&str)>` is not
//! reported as a borrow.

use syn::{GenericArgument, PathArguments, Type};

/// The first reference anywhere inside `ty` (`&str`, `Vec<&str>`, ...).
pub(super) fn find_reference(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(_) => Some(ty),
        _ => nested_types(ty).into_iter().find_map(find_reference),
    }
}

/// The first `impl Trait` anywhere inside `ty`.
pub(super) fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        _ => nested_types(ty).into_iter().find_map(find_impl_trait),
    }
}

/// The type arguments written between the angle brackets of a path segment, `V` and `E` of
/// `Result<V, E>`; lifetimes, consts and associated-type bindings are left out.
pub(super) fn type_arguments(arguments: &PathArguments) -> Vec<&Type> {
    match arguments {
        PathArguments::AngleBracketed(generic) => generic
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The types directly inside `ty`, for the two searches above.
fn nested_types(ty: &Type) -> Vec<&Type> {
    match ty {
        Type::Array(array) => vec![&*array.elem],
        Type::Group(group) => vec![&*group.elem],
        Type::Paren(paren) => vec![&*paren.elem],
        Type::Ptr(ptr) => vec![&*ptr.elem],
        Type::Reference(reference) => vec![&*reference.elem],
        Type::Slice(slice) => vec![&*slice.elem],
        Type::Tuple(tuple) => tuple.elems.iter().collect(),
        Type::Path(path) => path
            .path
            .segments
            .iter()
            .flat_map(|segment| type_arguments(&segment.arguments))
            .collect(),
        _ => Vec::new(),
    }
}
