//! Work in progress.
use proc_macro::TokenStream;
/// Work in progress.
#[proc_macro_attribute]
pub fn cacheback(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}
