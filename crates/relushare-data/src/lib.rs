//! Dataset formats: CIFAR-10 binary, SVHN `.mat`, Fashion-MNIST IDX/gzip, checksummed download, synthetic data.
