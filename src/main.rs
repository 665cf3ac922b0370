fn main() {
    println!("polyhead");
}
