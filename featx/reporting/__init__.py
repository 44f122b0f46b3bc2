"""What people would rather see than read: the HTML report of a bundle, what a cache or bundle
holds (``info``), the pictures (``plots``) and TensorBoard logs the stages draw."""
