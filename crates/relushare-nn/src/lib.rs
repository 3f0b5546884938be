//! ReLU-sharing layers, training and evaluation on Burn, clustering, export to the model file.
