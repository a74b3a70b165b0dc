// `histodistill config-keys`: every config key with its type, default and meaning, from the one key table.
import ArgumentParser
import Training

struct ConfigKeys: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-keys",
        abstract: "List every config key (section.key, type, default, meaning); --markdown prints configs/README.md's reference.")

    @Flag(help: "Print the Markdown reference tables of configs/README.md.")
    var markdown = false

    func run() {
        if markdown {
            print(ConfigKey.markdownReference, terminator: "")
            return
        }
        let width = ConfigKey.table.map(\.path.count).max() ?? 0
        for k in ConfigKey.table {
            print("\(k.path.padding(toLength: width, withPad: " ", startingAt: 0))  \(k.doc) (\(k.type); default \(k.defaultText))")
        }
    }
}
