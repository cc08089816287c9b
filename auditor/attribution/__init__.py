"""Attribution methods, one module each: gradients, projection, features/store, influence, TFA."""
