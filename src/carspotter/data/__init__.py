"""Data: raw Stanford Cars layouts and user folders → prepared dataset → tensors. Needs no model code."""
