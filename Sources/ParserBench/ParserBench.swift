@main enum ParserBench { static func main() {} }
