// bench/exec (placeholder until the benchmark lands).
@main
enum ExecBench {
    static func main() {}
}
