fn main() {
    print!("{}", postgres_operator::crdgen::crds_yaml().unwrap());
}
