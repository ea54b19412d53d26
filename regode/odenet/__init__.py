"""MS-ODENet: learned multi-scale neural-ODE registration (model, networks, data, training, registration)."""
